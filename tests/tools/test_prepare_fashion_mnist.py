"""tools/dataset_converters/prepare_fashion_mnist.py: decompress, verify,
name what is wrong."""
import gzip
import os
import shutil
import subprocess

import numpy as np
import pytest

from helpers import PY, ROOT
from helpers.data import write_idx
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
        [PY, 'tools/dataset_converters/prepare_fashion_mnist.py',
         '--src', str(tmp_path / 'nope'), '--out', str(tmp_path / 'o')],
        cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 1
    assert 'does not exist' in res.stderr
