"""Small evaluation utilities shared by algorithms and search.

``recalibrate_bn`` re-estimates BatchNorm statistics on a few training
batches (EagleEye's adaptive BN): after pruning, the kept channels see
different inputs, and stale running statistics make a pruned model look far
worse than it is (Torch-Pruning's pruned ResNet-56 sits at 10 % until this).
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

import torch
from torch import nn


def to_tensors(model: nn.Module, batch
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(inputs, labels) of an mmengine data batch, or a tuple batch as is.

    ``labels`` is ``None`` when the data samples carry no class label
    (``gt_label``): detection samples hold boxes, which only the model's
    own loss reads."""
    if isinstance(batch, dict):
        data = model.data_preprocessor(batch, False)
        samples = data.get('data_samples') or []
        if not samples or not all(hasattr(ds, 'gt_label') for ds in samples):
            return data['inputs'], None
        labels = torch.cat([ds.gt_label.reshape(-1) for ds in samples])
        return data['inputs'], labels
    inputs, labels = batch
    return inputs, labels


def require_labels(labels: torch.Tensor | None, what: str) -> torch.Tensor:
    """``labels``, or a ValueError naming ``what`` when a batch had none
    (see :func:`to_tensors`)."""
    if labels is None:
        raise ValueError(f'{what}: the batches carry no class labels (data '
                         'samples without gt_label, e.g. detection); it '
                         'needs a classification dataset')
    return labels


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable,
                   num_batches: int = 50,
                   forward: Callable | None = None) -> int:
    """Reset and re-estimate every BatchNorm's running statistics.

    Args:
        model: Model to update in place (left in its original mode).
        batches: Training batches (mmengine dicts or ``(inputs, labels)``).
        num_batches: Batches to average over (cumulative average).
        forward: ``forward(model, inputs)``; default ``model(inputs,
            mode='tensor')`` for mmengine models, else ``model(inputs)``.

    Returns:
        Number of batches used.
    """
    bns = [m for m in model.modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm)
           and m.track_running_stats]
    saved = [(m, m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the batches
    training = model.training
    model.train()
    # a model may keep its BNs in eval mode while training (mmdet's
    # norm_eval): reset without re-estimation would leave mean 0 / var 1
    for m in bns:
        m.train()
    used = 0
    try:
        for batch in itertools.islice(batches, num_batches):
            inputs, _ = to_tensors(model, batch)
            _forward(model, inputs, forward)
            used += 1
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        model.train(training)
    return used


def _forward(model, inputs, forward):
    if forward is not None:
        return forward(model, inputs)
    if hasattr(model, 'data_preprocessor'):
        return model(inputs, mode='tensor')
    return model(inputs)


@torch.no_grad()
def evaluate_top1(model: nn.Module, batches: Iterable,
                  max_batches: int | None = None,
                  forward: Callable | None = None) -> float:
    """Top-1 accuracy in percent over (at most ``max_batches``) batches."""
    training = model.training
    model.eval()
    correct = total = 0
    try:
        for batch in itertools.islice(batches, max_batches):
            inputs, labels = to_tensors(model, batch)
            labels = require_labels(labels, 'evaluate_top1')
            logits = _forward(model, inputs, forward)
            if isinstance(logits, (tuple, list)):
                logits = logits[-1]
            correct += int((logits.argmax(-1).cpu() == labels.cpu()).sum())
            total += labels.numel()
    finally:
        model.train(training)
    if total == 0:
        raise ValueError('evaluate_top1: no samples')
    return 100.0 * correct / total
