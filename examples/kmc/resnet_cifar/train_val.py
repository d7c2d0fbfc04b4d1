"""Data loading, training and validation for the Knight-MC pruning demo.

Plain PyTorch on purpose: this is "the user's own training code" that
``MCPruning`` plugs into. ``validate`` returns the dict Knight expects
(``ind1`` / ``ind2`` in percent, ``vloss``). The data as tensors, the
augmentation and the top-1 / top-5 evaluation are those of the benchmarks
(``mmrazor_ext.apis.benchmark``).
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset

from mmrazor_ext.apis.benchmark import augment, load_fashion_mnist, topk_metrics


def fmnist_loader(data_dir: str, batch_size: int = 128,
                  train_limit: int | None = None,
                  test_limit: int | None = None, seed: int = 0):
    """(train_loader, test_loader) of Fashion-MNIST IDX files in
    ``data_dir`` (``make data`` writes data/fashion_mnist)."""
    xs, ys = load_fashion_mnist(data_dir, 'train', train_limit)
    xt, yt = load_fashion_mnist(data_dir, 'test', test_limit)
    gen = torch.Generator().manual_seed(seed)
    train = DataLoader(TensorDataset(xs, ys), batch_size, shuffle=True,
                       generator=gen, drop_last=len(xs) > batch_size)
    test = DataLoader(TensorDataset(xt, yt), 256)
    return train, test


def train(model, optimizer, criterion, train_loader, lr_scheduler=None):
    """One epoch; returns (top-1 %, top-5 %, mean loss)."""
    model.train()
    correct1 = correct5 = total = 0
    loss_sum = 0.0
    for x, y in train_loader:
        out = model(augment(x))
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


def validate(model, val_loader):
    """Knight's evaluation dict: ``ind1`` top-1 %, ``ind2`` top-5 %
    (``acc1`` = ``ind1``), ``vloss``."""
    result = topk_metrics(model, val_loader)
    return {'acc1': result['ind1'], **result}


@torch.no_grad()
def recalibrate(model, train_loader, num_batches: int = 5):
    """Re-estimate BN statistics on a few training batches (used as
    ``calib_fn``: pruned models look far worse with stale statistics)."""
    from mmrazor_ext.utils.evaluation import recalibrate_bn
    recalibrate_bn(model, train_loader, num_batches)


def pretrained_model(model, train_loader, work_dir: str, epochs: int = 2,
                     pretrained: str | None = None):
    """Load trained weights into ``model``: from ``pretrained`` (a state
    dict or a ``tools/train.py`` checkpoint) or from a short baseline run
    (one-cycle SGD for ``epochs`` epochs), cached in ``work_dir`` so the
    demos share it. Returns ``model``."""
    import os.path as osp

    if pretrained:
        from mmrazor_ext.engine import safe_load
        ckpt = safe_load(pretrained)
        model.load_state_dict(ckpt.get('state_dict', ckpt))
        return model
    base = osp.join(work_dir, f'baseline_{epochs}e_'
                    f'{len(train_loader.dataset)}.pth')
    if osp.isfile(base):
        model.load_state_dict(torch.load(base, weights_only=True))
        return model
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9,
                          weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, 0.2, total_steps=max(8, epochs * len(train_loader)))
    for ep in range(epochs):
        acc1, _, loss = train(model, opt, torch.nn.CrossEntropyLoss(),
                              train_loader, sched)
        print(f'baseline epoch {ep + 1}: train top-1 {acc1:.2f}, '
              f'loss {loss:.3f}')
    torch.save(model.state_dict(), base)
    return model
