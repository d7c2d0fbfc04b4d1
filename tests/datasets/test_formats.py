"""Reading IDX files and CIFAR batches without pickle code
(datasets/formats.py)."""
import os

import numpy as np
import pytest

from helpers.data import write_idx


def test_cifar_python2_style_batches_load_without_pickle_code(tmp_path):
    """Official CIFAR batches are protocol-2 pickles of numpy arrays; the
    restricted unpickler reads them (and the meta file) as mmpretrain did."""
    import pickle

    from helpers.data import make_cifar10
    from mmrazor_ext.datasets import CIFAR10, load_cifar_pickle
    root = make_cifar10(str(tmp_path / 'c'), n_per_batch=4)
    folder = os.path.join(root, 'cifar-10-batches-py')
    for name in ('data_batch_3', 'batches.meta'):
        path = os.path.join(folder, name)
        with open(path, 'rb') as f:
            obj = pickle.load(f)
        with open(path, 'wb') as f:
            pickle.dump({k.encode(): v for k, v in obj.items()}, f,
                        protocol=2)
    assert load_cifar_pickle(os.path.join(folder, 'data_batch_3'))[
        'data'].shape == (4, 3072)
    ds = CIFAR10(data_root=root, split='train', verify_md5=False, pipeline=[])
    assert len(ds) == 20 and ds[0]['img'].shape == (32, 32, 3)


def test_idx_reader_checks_header_and_size(tmp_path):
    from mmrazor_ext.datasets import DatasetFormatError, read_idx
    path = str(tmp_path / 'x')
    write_idx(path, np.arange(12).reshape(3, 4))
    assert read_idx(path, 2).tolist() == np.arange(12).reshape(3, 4).tolist()
    with pytest.raises(DatasetFormatError, match='with 2 dims, expected uint8 '
                                                 'with 3'):
        read_idx(path, 3)
    with open(path, 'ab') as f:
        f.write(b'\0')
    with pytest.raises(DatasetFormatError, match='25 bytes, expected 24'):
        read_idx(path, 2)
    (tmp_path / 'y').write_bytes(b'PK\x03\x04rest')
    with pytest.raises(DatasetFormatError, match='not an IDX file'):
        read_idx(str(tmp_path / 'y'), 1)
