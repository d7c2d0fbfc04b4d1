"""mmpretrain datasets that never download and fail clearly when missing.

mmpretrain's MNIST-family datasets download by default and its error for a
missing folder suggests ``download=True``; this project has no network at run
time, so these subclasses check the files first and say how to obtain them.
They also read the raw files themselves (:mod:`.formats`): IDX headers,
sizes and image / label counts are checked at load, and CIFAR pickles are
read without executing code from them.
"""
import os.path as osp

import numpy as np
from mmpretrain.datasets import CIFAR10 as _CIFAR10
from mmpretrain.datasets import FashionMNIST as _FashionMNIST
from mmpretrain.datasets import ImageNet as _ImageNet

from mmrazor_ext.registry import DATASETS

from .formats import DatasetFormatError, load_cifar_pickle, read_idx


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

    def load_data_list(self) -> list:
        """Images and labels of the split from the checked IDX files.

        Raises:
            DatasetFormatError: A file is truncated / of the wrong kind, the
                image and label counts differ or a label is out of range;
                the message names the file(s).
        """
        root = self.data_prefix['root']
        files = self.test_list if self.test_mode else self.train_list
        img_path, label_path = (osp.join(root, f[0][:-3]) for f in files)
        imgs = read_idx(img_path, 3)
        labels = read_idx(label_path, 1)
        if len(imgs) != len(labels):
            raise DatasetFormatError(
                f'{img_path} holds {len(imgs)} images but {label_path} '
                f'{len(labels)} labels; the two files must match')
        classes = len(self.metainfo.get('classes') or ()) or 10
        if len(labels) and int(labels.max()) >= classes:
            raise DatasetFormatError(
                f'{label_path}: label {int(labels.max())} outside the '
                f'{classes} classes')
        return [{'img': img, 'gt_label': np.array(label, dtype=np.int64)}
                for img, label in zip(imgs, labels)]


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

    def load_data_list(self) -> list:
        """Images and labels of the split, unpickled without running code.

        Raises:
            DatasetFormatError: A batch refers to code (refused), lacks
                ``data`` / ``labels``, or their sizes disagree; the message
                names the file.
        """
        self._check_integrity()
        folder = osp.join(self.data_prefix['root'], self.base_folder)
        files = self.train_list if self.split == 'train' else self.test_list
        imgs, labels = [], []
        for name, _ in files:
            path = osp.join(folder, name)
            entry = load_cifar_pickle(path)
            data = entry.get('data')
            lab = entry.get('labels', entry.get('fine_labels'))
            if not isinstance(data, np.ndarray) or data.dtype != np.uint8 \
                    or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
                raise DatasetFormatError(
                    f'{path}: "data" must be a uint8 array of shape (N, 3072)'
                    f', got {getattr(data, "dtype", type(data).__name__)} '
                    f'{getattr(data, "shape", "")}')
            if lab is None or len(lab) != len(data):
                raise DatasetFormatError(
                    f'{path}: {len(data)} images but '
                    f'{"no" if lab is None else len(lab)} labels')
            imgs.append(data)
            labels.extend(int(v) for v in lab)
        imgs = np.vstack(imgs).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))
        if self.CLASSES is None:
            meta = osp.join(folder, self.meta['filename'])
            names = load_cifar_pickle(meta).get(self.meta['key'])
            if not isinstance(names, list):
                raise DatasetFormatError(
                    f'{meta}: no {self.meta["key"]!r} list')
            self._metainfo.setdefault('classes', names)
        return [{'img': img, 'gt_label': label}
                for img, label in zip(imgs, labels)]


@DATASETS.register_module()
class ImageNet(_ImageNet):
    """ImageNet-1k in mmpretrain's layout (``train/``, ``val/``, ``meta/``)."""

    def __init__(self, data_root: str = '', split: str = 'train', **kwargs):
        _require([osp.join(data_root, split)], 'ImageNet',
                 f'Place (or symlink) the ILSVRC2012 {split} folder under '
                 f'{data_root}.')
        super().__init__(data_root=data_root, split=split, **kwargs)
