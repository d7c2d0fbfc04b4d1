"""Data loading, training and validation for the Knight-MC pruning demo.

Plain PyTorch on purpose: this is "the user's own training code" that
``MCPruning`` plugs into. ``validate`` returns the dict Knight expects
(``ind1`` / ``ind2`` in percent, ``vloss``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

MEAN, STD = 72.94, 90.02  # Fashion-MNIST training-set statistics


def _load(root: str, split: str, limit: int | None):
    from mmrazor_ext.datasets import FashionMNIST
    ds = FashionMNIST(data_root=root, split=split, pipeline=[],
                      lazy_init=False)
    n = len(ds) if limit is None else min(limit, len(ds))
    x = torch.stack([torch.from_numpy(ds.get_data_info(i)['img'])
                     for i in range(n)]).float()
    y = torch.tensor([int(ds.get_data_info(i)['gt_label']) for i in range(n)])
    return ((x - MEAN) / STD).unsqueeze(1), y


def fmnist_loader(data_dir: str, batch_size: int = 128,
                  train_limit: int | None = None,
                  test_limit: int | None = None, seed: int = 0):
    """(train_loader, test_loader) of Fashion-MNIST IDX files in
    ``data_dir`` (``make data`` writes data/fashion_mnist)."""
    xs, ys = _load(data_dir, 'train', train_limit)
    xt, yt = _load(data_dir, 'test', test_limit)
    gen = torch.Generator().manual_seed(seed)
    train = DataLoader(TensorDataset(xs, ys), batch_size, shuffle=True,
                       generator=gen, drop_last=len(xs) > batch_size)
    test = DataLoader(TensorDataset(xt, yt), 256)
    return train, test


def _augment(x):
    # random 2-px shift and horizontal flip
    pad = F.pad(x, (2, 2, 2, 2))
    i, j = torch.randint(0, 5, (2,)).tolist()
    x = pad[:, :, i:i + 28, j:j + 28]
    flip = torch.rand(x.shape[0]) < 0.5
    x[flip] = x[flip].flip(-1)
    return x


def train(model, optimizer, criterion, train_loader, lr_scheduler=None):
    """One epoch; returns (top-1 %, top-5 %, mean loss)."""
    model.train()
    correct1 = correct5 = total = 0
    loss_sum = 0.0
    for x, y in train_loader:
        out = model(_augment(x))
        loss = criterion(out, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if lr_scheduler is not None:
            lr_scheduler.step()
        top5 = out.topk(5, 1).indices
        correct1 += int((top5[:, 0] == y).sum())
        correct5 += int((top5 == y[:, None]).any(1).sum())
        total += y.numel()
        loss_sum += loss.item() * y.numel()
    return 100.0 * correct1 / total, 100.0 * correct5 / total, \
        loss_sum / total


@torch.no_grad()
def validate(model, val_loader):
    """Knight's evaluation dict: ``ind1`` top-1 %, ``ind2`` top-5 %."""
    training = model.training
    model.eval()
    correct1 = correct5 = total = 0
    loss_sum = 0.0
    for x, y in val_loader:
        out = model(x)
        top5 = out.topk(5, 1).indices
        correct1 += int((top5[:, 0] == y).sum())
        correct5 += int((top5 == y[:, None]).any(1).sum())
        loss_sum += float(F.cross_entropy(out, y, reduction='sum'))
        total += y.numel()
    model.train(training)
    acc1 = 100.0 * correct1 / total
    return {'acc1': acc1, 'ind1': acc1, 'ind2': 100.0 * correct5 / total,
            'vloss': loss_sum / total}


@torch.no_grad()
def recalibrate(model, train_loader, num_batches: int = 5):
    """Re-estimate BN statistics on a few training batches (used as
    ``calib_fn``: pruned models look far worse with stale statistics)."""
    from mmrazor_ext.utils.evaluation import recalibrate_bn
    recalibrate_bn(model, train_loader, num_batches)
