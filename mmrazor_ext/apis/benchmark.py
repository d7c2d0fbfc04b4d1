"""Plain-PyTorch pieces shared by the benchmarks in tools/benchmark/ and
the Knight-MC example: Fashion-MNIST as tensors, the short one-cycle
training recipe, a cached trained baseline and top-1 / top-5 evaluation.

Everything works on ``(inputs, labels)`` batches of normalised
``(N, 1, 28, 28)`` images, without the mmengine Runner, so a benchmark's
budget (samples, epochs) is set by its flags alone.
"""
from __future__ import annotations

import argparse
import os.path as osp
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    'FMNIST_MEAN', 'FMNIST_STD', 'load_fashion_mnist',
    'fashion_mnist_loaders', 'augment',
    'train_one_cycle', 'top1', 'topk_metrics', 'split_batches',
    'baseline_path', 'cached_baseline', 'add_baseline_args',
    'baseline_from_args'
]

# Fashion-MNIST training-set statistics (as configs/_base_/datasets/).
FMNIST_MEAN, FMNIST_STD = 72.94, 90.02


def load_fashion_mnist(root: str, split: str, limit: int | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)`` of a Fashion-MNIST split as tensors.

    Args:
        root: Folder with the IDX files (``make data`` writes
            data/fashion_mnist).
        split: ``'train'`` or ``'test'``.
        limit: Keep the first ``limit`` samples (None: all).

    Returns:
        Float images ``(N, 1, 28, 28)`` normalised with the training-set
        mean / std, and int64 labels ``(N,)``.
    """
    from mmrazor_ext.datasets import FashionMNIST
    ds = FashionMNIST(data_root=root, split=split, pipeline=[],
                      lazy_init=False)
    n = len(ds) if limit is None else min(limit, len(ds))
    x = torch.stack([torch.from_numpy(ds.get_data_info(i)['img'])
                     for i in range(n)]).float()
    y = torch.tensor([int(ds.get_data_info(i)['gt_label']) for i in range(n)])
    return ((x - FMNIST_MEAN) / FMNIST_STD).unsqueeze(1), y


def fashion_mnist_loaders(root: str, train_samples: int | None = None,
                          test_samples: int | None = None,
                          batch_size: int = 128):
    """``(train_loader, test_loader)`` over the first samples of each split:
    shuffled training batches of ``batch_size`` (the last partial one
    dropped) and test batches of 512."""
    from torch.utils.data import DataLoader, TensorDataset
    xs, ys = load_fashion_mnist(root, 'train', train_samples)
    xt, yt = load_fashion_mnist(root, 'test', test_samples)
    return (DataLoader(TensorDataset(xs, ys), batch_size, shuffle=True,
                       drop_last=True),
            DataLoader(TensorDataset(xt, yt), 512))


def augment(x: torch.Tensor) -> torch.Tensor:
    """Random 2-px shift and horizontal flip of a 28x28 batch, as the
    Fashion-MNIST training configs do (one shift for the whole batch)."""
    pad = F.pad(x, (2, 2, 2, 2))
    i, j = torch.randint(0, 5, (2,)).tolist()
    x = pad[:, :, i:i + 28, j:j + 28]
    flip = torch.rand(x.shape[0]) < 0.5
    x[flip] = x[flip].flip(-1)
    return x


def train_one_cycle(model: nn.Module, loader, epochs: int, lr: float,
                    desc: str = 'train') -> nn.Module:
    """Train with augmented batches: SGD (momentum 0.9, nesterov, weight
    decay 5e-4) under a one-cycle LR peaking at ``lr``.

    Args:
        model: Trained in place (left in train mode).
        loader: ``(inputs, labels)`` batches.
        epochs: Passes over ``loader`` (0: nothing is trained).
        lr: Peak learning rate.
        desc: Progress-bar label.

    Returns:
        ``model``.
    """
    from tqdm import tqdm
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9,
                          weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        # torch.optim OneCycleLR divides by zero below ~8 steps.
        opt, max_lr=lr, total_steps=max(epochs * len(loader), 8),
        pct_start=0.25)
    model.train()
    for ep in range(epochs):
        for x, y in tqdm(loader, desc=f'{desc} epoch {ep + 1}/{epochs}',
                         leave=False):
            loss = F.cross_entropy(model(augment(x)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model


def top1(model: nn.Module, batches: Iterable) -> float:
    """Top-1 accuracy (%) of ``model`` put in eval mode (and left there)."""
    from mmrazor_ext.utils.evaluation import evaluate_top1
    model.eval()
    return evaluate_top1(model, batches)


@torch.no_grad()
def topk_metrics(model: nn.Module, batches: Iterable) -> dict:
    """Knight-MC's evaluation dict of ``model`` in eval mode (its mode is
    restored afterwards): ``ind1`` top-1 %, ``ind2`` top-5 %, ``vloss``
    mean cross-entropy."""
    training = model.training
    model.eval()
    correct1 = correct5 = total = 0
    loss = 0.0
    try:
        for x, y in batches:
            out = model(x)
            top5 = out.topk(5, 1).indices
            correct1 += int((top5[:, 0] == y).sum())
            correct5 += int((top5 == y[:, None]).any(1).sum())
            loss += float(F.cross_entropy(out, y, reduction='sum'))
            total += y.numel()
    finally:
        model.train(training)
    return {'ind1': 100.0 * correct1 / total,
            'ind2': 100.0 * correct5 / total, 'vloss': loss / total}


def split_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int
                  ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(x, y)`` cut into consecutive batches (the last may be smaller)."""
    return [(x[i:i + batch_size], y[i:i + batch_size])
            for i in range(0, len(x), batch_size)]


def baseline_path(out_dir: str, depth: int, epochs: int,
                  num_samples: int) -> str:
    """Where :func:`cached_baseline` keeps a baseline trained by this
    recipe: keyed by depth, epochs and number of training samples."""
    return osp.join(out_dir, f'baseline_r{depth}_{epochs}e_{num_samples}.pth')


def cached_baseline(depth: int, loader, epochs: int, path: str,
                    must_exist: bool = False, lr: float = 0.2) -> nn.Module:
    """A ResNet (CIFAR layout, 1 input channel, 10 classes) trained with
    :func:`train_one_cycle`, loaded from ``path`` when it exists.

    Args:
        depth: ResNet depth (20, 32, 44, 56, 110, ...).
        loader: Training batches.
        epochs: Training epochs when ``path`` does not exist yet; with 0 the
            initial weights are returned and nothing is saved.
        path: State dict (or ``tools/train.py`` checkpoint) to load, else
            where the trained state dict is saved (atomically), e.g.
            :func:`baseline_path`.
        must_exist: Raise instead of training when ``path`` is missing
            (a checkpoint the user named).
        lr: Peak learning rate of the training.

    Returns:
        The model, in eval mode.
    """
    from mmrazor_ext.engine import safe_load
    from mmrazor_ext.models import CifarResNet
    from mmrazor_ext.utils import atomic_torch_save
    model = CifarResNet(depth, 10, 1)
    if osp.exists(path):
        state = safe_load(path)
        model.load_state_dict(state.get('state_dict', state))
        print(f'baseline loaded from {path}', flush=True)
    elif must_exist:
        raise FileNotFoundError(f'baseline checkpoint {path} does not exist')
    elif epochs > 0:
        train_one_cycle(model, loader, epochs, lr, 'baseline')
        atomic_torch_save(path, model.state_dict())
    return model.eval()


def add_baseline_args(parser: argparse.ArgumentParser, depth: int = 56,
                      baseline_epochs: int = 3
                      ) -> argparse.ArgumentParser:
    """Add the data and baseline flags read by :func:`baseline_from_args`:
    ``--depth``, ``--data-root``, ``--baseline`` (a trained state dict to
    reuse), ``--baseline-epochs``, ``--train-samples``, ``--test-samples``,
    ``--batch-size`` and ``--seed``."""
    parser.add_argument('--depth', type=int, default=depth)
    parser.add_argument('--data-root', default='data/fashion_mnist')
    parser.add_argument('--baseline', default=None,
                        help='trained baseline state dict to reuse (same '
                        'recipe); default: trained and cached in --out-dir')
    parser.add_argument('--baseline-epochs', type=int,
                        default=baseline_epochs)
    parser.add_argument('--train-samples', type=int, default=None)
    parser.add_argument('--test-samples', type=int, default=None)
    parser.add_argument('--batch-size', type=int, default=128)
    parser.add_argument('--seed', type=int, default=0)
    return parser


def baseline_from_args(args: argparse.Namespace):
    """Seed torch with ``args.seed``, load the data and the cached baseline
    (``args.baseline``, else :func:`baseline_path` in ``args.out_dir``).

    Returns:
        ``(model, train_loader, test_loader)``; the model in eval mode.
    """
    torch.manual_seed(args.seed)
    train_loader, test_loader = fashion_mnist_loaders(
        args.data_root, args.train_samples, args.test_samples, args.batch_size)
    path = args.baseline or baseline_path(
        args.out_dir, args.depth, args.baseline_epochs,
        len(train_loader.dataset))
    model = cached_baseline(args.depth, train_loader, args.baseline_epochs,
                            path, must_exist=bool(args.baseline))
    return model, train_loader, test_loader
