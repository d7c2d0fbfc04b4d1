"""mmpretrain datasets that never download and fail clearly when missing.

mmpretrain's MNIST-family datasets download by default and its error for a
missing folder suggests ``download=True``; this project has no network at run
time, so these subclasses check the files first and say how to obtain them.
"""
import os.path as osp

from mmpretrain.datasets import CIFAR10 as _CIFAR10
from mmpretrain.datasets import FashionMNIST as _FashionMNIST
from mmpretrain.datasets import ImageNet as _ImageNet

from mmrazor_ext.registry import DATASETS


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not where the config says."""


def _require(paths, dataset: str, how: str) -> None:
    missing = [p for p in paths if not osp.exists(p)]
    if missing:
        raise DatasetNotFoundError(
            f'{dataset} dataset not found at {osp.dirname(missing[0]) or "."}'
            f' (missing: {", ".join(osp.basename(p) for p in missing)}). '
            f'{how} See README.md, section "Datasets".')


@DATASETS.register_module()
class FashionMNIST(_FashionMNIST):
    """Fashion-MNIST from local IDX files (``make data`` prepares them).

    mmpretrain 1.2.0 chooses the files by ``test_mode``, not ``split``, so
    ``split='test'`` alone would silently load the 60k training images; here
    the split decides.
    """

    def __init__(self, data_root: str = '', split: str = 'train', **kwargs):
        kwargs['download'] = False
        kwargs['test_mode'] = split == 'test'
        files = [f[0][:-3] for f in self.train_list + self.test_list]
        _require([osp.join(data_root, f) for f in files], 'FashionMNIST',
                 'Run `make data` (or python tools/dataset_converters/'
                 'prepare_fashion_mnist.py).')
        super().__init__(data_root=data_root, split=split, **kwargs)


@DATASETS.register_module()
class CIFAR10(_CIFAR10):
    """CIFAR-10 from the python pickle batches under ``data_root``.

    Args:
        verify_md5: Check the files against the official checksums (set
            False for a re-packed or subsampled copy in the same format).
    """

    def __init__(self, data_root: str = '', split: str = 'train',
                 verify_md5: bool = True, **kwargs):
        kwargs['download'] = False
        self.verify_md5 = verify_md5
        if not verify_md5:
            self.meta = dict(self.meta, md5=None)
        folder = osp.join(data_root, self.base_folder)
        files = [f[0] for f in self.train_list + self.test_list]
        _require([osp.join(folder, f) for f in files], 'CIFAR10',
                 f'Extract cifar-10-python.tar.gz into {data_root}.')
        super().__init__(data_root=data_root, split=split, **kwargs)

    def _check_integrity(self) -> bool:
        folder = osp.join(self.data_prefix['root'], self.base_folder)
        present = all(osp.exists(osp.join(folder, f[0]))
                      for f in self.train_list + self.test_list)
        if not self.verify_md5 or not present:
            return present
        if not super()._check_integrity():
            raise DatasetNotFoundError(
                f'CIFAR10 files in {folder} do not match the official MD5 '
                'checksums (corrupt download?). For a re-packed or '
                'subsampled copy set dataset.verify_md5=False.')
        return True


@DATASETS.register_module()
class ImageNet(_ImageNet):
    """ImageNet-1k in mmpretrain's layout (``train/``, ``val/``, ``meta/``)."""

    def __init__(self, data_root: str = '', split: str = 'train', **kwargs):
        _require([osp.join(data_root, split)], 'ImageNet',
                 f'Place (or symlink) the ILSVRC2012 {split} folder under '
                 f'{data_root}.')
        super().__init__(data_root=data_root, split=split, **kwargs)
