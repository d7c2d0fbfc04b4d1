"""Tiny data sets on disk (Fashion-MNIST IDX, CIFAR-10 python batches,
COCO detection) and random in-memory batches."""
import json
import os
import pickle
import struct

import numpy as np
import torch


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


def make_coco(root, n=4, size=64, classes=('cat', 'dog', 'car')):
    """Synthetic COCO-format detection data: coloured boxes on noise."""
    from PIL import Image
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(root, 'annotations'), exist_ok=True)
    os.makedirs(os.path.join(root, 'images'), exist_ok=True)
    images, anns = [], []
    for i in range(n):
        img = rng.integers(0, 80, size=(size, size, 3), dtype=np.uint8)
        for _ in range(2):
            x, y = rng.integers(0, size // 2, size=2)
            w, h = rng.integers(8, size // 2, size=2)
            c = int(rng.integers(0, len(classes)))
            img[y:y + h, x:x + w] = 80 * (c + 1)
            anns.append(dict(id=len(anns) + 1, image_id=i + 1, category_id=c + 1,
                             bbox=[int(x), int(y), int(w), int(h)], area=int(w * h),
                             iscrowd=0))
        name = f'{i:06d}.png'
        Image.fromarray(img).save(os.path.join(root, 'images', name))
        images.append(dict(id=i + 1, file_name=name, width=size, height=size))
    cats = [dict(id=i + 1, name=c) for i, c in enumerate(classes)]
    with open(os.path.join(root, 'annotations', 'train.json'), 'w') as f:
        json.dump(dict(images=images, annotations=anns, categories=cats), f)
    return root


def random_batches(n, shape=(8, 1, 28, 28), classes=10, seed=0):
    """``n`` random (images, labels) batches of ``shape``, reproducible."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(*shape, generator=g),
             torch.randint(0, classes, (shape[0],), generator=g))
            for _ in range(n)]
