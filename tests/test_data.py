"""Fashion-MNIST preparation and the offline datasets' errors."""
import gzip
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, make_fmnist, write_idx
from tools.dataset_converters import prepare_fashion_mnist as prep


@pytest.fixture
def full_size_src(tmp_path, monkeypatch):
    """A gzip source folder; sample counts shrunk so the test stays fast."""
    src = tmp_path / 'src'
    src.mkdir()
    counts = {'train': 60, 't10k': 10}
    rng = np.random.default_rng(0)
    for split, n in counts.items():
        for kind, shape in (('images-idx3', (n, 28, 28)),
                            ('labels-idx1', (n,))):
            raw = tmp_path / f'{split}-{kind}-ubyte'
            write_idx(str(raw), rng.integers(0, 255, size=shape))
            with open(raw, 'rb') as fin, gzip.open(
                    src / f'{split}-{kind}-ubyte.gz', 'wb') as fout:
                shutil.copyfileobj(fin, fout)
    monkeypatch.setattr(prep, 'FILES', {
        'train-images-idx3-ubyte': (3, 60), 'train-labels-idx1-ubyte': (1, 60),
        't10k-images-idx3-ubyte': (3, 10), 't10k-labels-idx1-ubyte': (1, 10)})
    return src


def test_prepare_decompresses_and_verifies(full_size_src, tmp_path):
    out = tmp_path / 'out'
    shapes = prep.prepare(str(full_size_src), str(out))
    assert shapes['train-images-idx3-ubyte'] == (60, 28, 28)
    assert shapes['t10k-labels-idx1-ubyte'] == (10,)
    assert sorted(os.listdir(out)) == sorted(prep.FILES)  # no temp leftovers
    # Idempotent: a second run keeps the valid files.
    mtime = os.path.getmtime(out / 'train-images-idx3-ubyte')
    prep.prepare(str(full_size_src), str(out))
    assert os.path.getmtime(out / 'train-images-idx3-ubyte') == mtime


def test_truncated_file_is_rejected(full_size_src, tmp_path):
    raw = gzip.decompress(
        (full_size_src / 'train-images-idx3-ubyte.gz').read_bytes())
    (full_size_src / 'train-images-idx3-ubyte.gz').write_bytes(
        gzip.compress(raw[:-100]))
    out = tmp_path / 'out'
    with pytest.raises(prep.DataError, match='train-images-idx3-ubyte.*'
                       'truncated or corrupt'):
        prep.prepare(str(full_size_src), str(out))
    assert not (out / 'train-images-idx3-ubyte').exists()
    assert not [f for f in os.listdir(out) if f.startswith('.')]


def test_wrong_sample_count_and_bad_magic(tmp_path):
    path = tmp_path / 'x'
    write_idx(str(path), np.zeros((5, 28, 28)))
    with pytest.raises(prep.DataError, match='5 samples, expected 60000'):
        prep.check_idx(str(path), 3, 60000)
    with pytest.raises(prep.DataError, match='not a uint8 IDX file'):
        prep.check_idx(str(path), 1, None)
    (tmp_path / 'short').write_bytes(b'\x00\x00')
    with pytest.raises(prep.DataError, match='truncated IDX header'):
        prep.check_idx(str(tmp_path / 'short'), 3)


def test_corrupt_gzip_is_named(full_size_src, tmp_path):
    (full_size_src / 'train-labels-idx1-ubyte.gz').write_bytes(b'not gzip')
    with pytest.raises(prep.DataError, match='cannot decompress'):
        prep.prepare(str(full_size_src), str(tmp_path / 'out'))


def test_missing_package_without_root_says_what_to_run(monkeypatch, tmp_path):
    monkeypatch.setattr(prep, 'DEBIAN_DIR', str(tmp_path / 'absent'))
    monkeypatch.setattr(prep.shutil, 'which', lambda _: None)
    with pytest.raises(prep.DataError,
                       match='apt-get install -y dataset-fashion-mnist'):
        prep.ensure_debian_package(str(tmp_path / 'absent'))


def test_cli_reports_error(tmp_path):
    res = subprocess.run(
        [sys.executable, 'tools/dataset_converters/prepare_fashion_mnist.py',
         '--src', str(tmp_path / 'nope'), '--out', str(tmp_path / 'o')],
        cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 1
    assert 'does not exist' in res.stderr


def test_datasets_fail_clearly_when_missing(tmp_path):
    from mmrazor_ext.datasets import (
        CIFAR10,
        DatasetNotFoundError,
        FashionMNIST,
        ImageNet,
    )
    with pytest.raises(DatasetNotFoundError, match='make data'):
        FashionMNIST(data_root=str(tmp_path), split='train')
    with pytest.raises(DatasetNotFoundError,
                       match=r'CIFAR10 dataset not found at .*See README'):
        CIFAR10(data_root=str(tmp_path / 'cifar10'), split='train')
    with pytest.raises(DatasetNotFoundError, match='ImageNet dataset not found'):
        ImageNet(data_root=str(tmp_path / 'imagenet'), split='val')


def test_fashion_mnist_reads_prepared_layout(tmp_path):
    from mmrazor_ext.datasets import FashionMNIST
    root = make_fmnist(str(tmp_path / 'fm'), n_train=20, n_test=7)
    train = FashionMNIST(data_root=root, split='train', pipeline=[])
    test = FashionMNIST(data_root=root, split='test', pipeline=[])
    assert len(train) == 20 and len(test) == 7
    assert train[0]['img'].shape == (28, 28)
    assert 'T-shirt/top' in train.metainfo['classes'][0]


def test_cifar_python2_style_batches_load_without_pickle_code(tmp_path):
    """Official CIFAR batches are protocol-2 pickles of numpy arrays; the
    restricted unpickler reads them (and the meta file) as mmpretrain did."""
    import pickle

    from conftest import make_cifar10
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
