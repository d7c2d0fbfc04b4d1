"""Shared fixtures: tiny Fashion-MNIST-format data and a tiny train config."""
import os
import struct
import subprocess

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Tests run on 2 cores, often under pytest-xdist: one thread per process.
torch.set_num_threads(1)


def write_idx(path: str, array: np.ndarray) -> None:
    """Write a uint8 array as an (uncompressed) IDX file."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    with open(path, 'wb') as f:
        f.write(struct.pack('>HBB', 0, 0x08, array.ndim))
        f.write(struct.pack('>' + 'I' * array.ndim, *array.shape))
        f.write(array.tobytes())


def make_fmnist(root: str, n_train: int = 64, n_test: int = 32,
                seed: int = 0) -> str:
    """Make a learnable Fashion-MNIST-format data root (class = bright band)."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    for split, n in (('train', n_train), ('t10k', n_test)):
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        imgs = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
        for i, y in enumerate(labels):
            imgs[i, 2 * y:2 * y + 4, :] = 220
        write_idx(os.path.join(root, f'{split}-images-idx3-ubyte'), imgs)
        write_idx(os.path.join(root, f'{split}-labels-idx1-ubyte'), labels)
    return root


def make_cifar10(root: str, n_per_batch: int = 16, seed: int = 0) -> str:
    """A CIFAR-10 python-format root (5 train batches + test batch of
    ``n_per_batch`` images); load it with ``verify_md5=False``."""
    import pickle
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, 'cifar-10-batches-py')
    os.makedirs(folder, exist_ok=True)
    names = [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']
    for name in names:
        labels = rng.integers(0, 10, size=n_per_batch)
        data = rng.integers(0, 60, size=(n_per_batch, 3, 32, 32))
        for i, y in enumerate(labels):
            data[i, :, 3 * y:3 * y + 3, :] = 220
        with open(os.path.join(folder, name), 'wb') as f:
            pickle.dump({'data': data.reshape(n_per_batch, -1).astype(
                np.uint8), 'labels': labels.tolist()}, f)
    with open(os.path.join(folder, 'batches.meta'), 'wb') as f:
        pickle.dump({'label_names': [f'c{i}' for i in range(10)]}, f)
    return root


@pytest.fixture(scope='session')
def tiny_fmnist(tmp_path_factory) -> str:
    """A data root with 64 train / 32 test images in Fashion-MNIST format."""
    return make_fmnist(str(tmp_path_factory.mktemp('fmnist')))


@pytest.fixture(scope='session')
def tiny_baseline(tmp_path_factory, tiny_fmnist) -> str:
    """ResNet-20 trained one epoch on ``tiny_fmnist`` through tools/train.py;
    the checkpoint path (shared by the algorithm and tool tests)."""
    wd = tmp_path_factory.mktemp('baseline')
    config = os.path.join(ROOT,
                          'configs/baselines/resnet20_1xb128_fashionmnist.py')
    run_tool([os.path.join(ROOT, '.venv', 'bin', 'python'), 'tools/train.py',
              config, '--work-dir', str(wd), *tiny_cfg_options(tiny_fmnist)])
    return str(wd / 'epoch_1.pth')


def tiny_cfg_options(data_root: str, max_epochs: int = 1,
                     batch_size: int = 8) -> list:
    """``--cfg-options`` that make a Fashion-MNIST config run in seconds."""
    return [
        '--cfg-options',
        f'train_dataloader.dataset.data_root={data_root}',
        f'val_dataloader.dataset.data_root={data_root}',
        f'test_dataloader.dataset.data_root={data_root}',
        f'train_dataloader.batch_size={batch_size}',
        'train_dataloader.num_workers=0',
        'train_dataloader.persistent_workers=False',
        'val_dataloader.num_workers=0',
        'val_dataloader.persistent_workers=False',
        'test_dataloader.num_workers=0',
        'test_dataloader.persistent_workers=False',
        f'train_cfg.max_epochs={max_epochs}',
        f'param_scheduler.end={max_epochs}',
        'default_hooks.logger.interval=1',
    ]


def run_tool(args: list, timeout: int = 300, env: dict | None = None,
             cwd: str = ROOT) -> subprocess.CompletedProcess:
    """Run a command from the repository root; fail with its output."""
    full_env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    full_env.update(env or {})
    proc = subprocess.run(args, cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(
            f'{" ".join(args)} exited {proc.returncode}\n'
            f'--- stdout ---\n{proc.stdout[-4000:]}\n'
            f'--- stderr ---\n{proc.stderr[-6000:]}')
    return proc
