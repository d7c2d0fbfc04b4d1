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


def to_tensors(model: nn.Module, batch, need_labels: str | None = None
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(inputs, labels) of an mmengine data batch, or a tuple batch as is.

    ``labels`` is ``None`` when the data samples carry no class label
    (``gt_label``): detection samples hold boxes, which only the model's
    own loss reads. ``need_labels`` names a caller that needs them: then a
    batch without labels is a ValueError naming it."""
    labels = None
    if isinstance(batch, dict):
        data = model.data_preprocessor(batch, False)
        inputs, samples = data['inputs'], data.get('data_samples') or []
        if samples and all(hasattr(ds, 'gt_label') for ds in samples):
            labels = torch.cat([ds.gt_label.reshape(-1) for ds in samples])
    else:
        inputs, labels = batch
    if labels is None and need_labels:
        raise ValueError(f'{need_labels}: the batches carry no class labels '
                         '(data samples without gt_label, e.g. detection); '
                         'it needs a classification dataset')
    return inputs, labels


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
            inputs, labels = to_tensors(model, batch, 'evaluate_top1')
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
