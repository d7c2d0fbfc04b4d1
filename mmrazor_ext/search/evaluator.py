"""Adaptive-BN subnet evaluator (EagleEye).

A candidate subnet is scored in masked mode on the shared model: set its
masks, re-estimate every BatchNorm's statistics on K cached training
batches, measure top-1 on cached held-out batches, then put the previous
BN statistics and masks back. Nothing is copied per candidate except, when
latency is requested, the physically exported model that gets timed.

``mode='export'`` instead scores the physically sliced copy of the subnet
(the shared model is untouched): the same numbers up to float rounding, and
faster when the subnet is much smaller than the supernet.

Batches are preprocessed once and kept as tensors, so two evaluations of the
same subnet see identical data and agree exactly, and the data pipeline's
cost is paid once instead of once per candidate.
"""
from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Mapping

import torch
from torch import nn

from mmrazor_ext.estimators import measure_latency
from mmrazor_ext.utils.evaluation import (
    evaluate_top1,
    recalibrate_bn,
    to_tensors,
)

__all__ = ['AdaptiveBNEvaluator', 'apply_subnet', 'bn_state', 'load_bn_state',
           'preserve_subnet']


def _bns(model: nn.Module):
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and m.track_running_stats]


def bn_state(model: nn.Module) -> list[dict[str, torch.Tensor]]:
    """Copies of every BatchNorm's running statistics."""
    return [{k: getattr(m, k).detach().clone()
             for k in ('running_mean', 'running_var', 'num_batches_tracked')
             if getattr(m, k, None) is not None} for m in _bns(model)]


@torch.no_grad()
def load_bn_state(model: nn.Module, state: list[dict[str, torch.Tensor]]
                  ) -> None:
    """Write statistics saved by :func:`bn_state` back (in place)."""
    bns = _bns(model)
    if len(bns) != len(state):
        raise ValueError(f'BN state has {len(state)} entries, the model has '
                         f'{len(bns)} BatchNorm layers')
    for m, s in zip(bns, state):
        for k, v in s.items():
            getattr(m, k).copy_(v)


def apply_subnet(pruner, subnet: Mapping[str, torch.Tensor] | None) -> None:
    """Mask the pruner's model with ``subnet``; ``None`` clears the masks."""
    if subnet is None:
        pruner.clear_subnet()
    else:
        pruner.set_subnet(subnet)


@contextlib.contextmanager
def preserve_subnet(pruner, bn_stats: bool = True) -> Iterator[None]:
    """Put the pruner's current masks back on exit, also on errors.

    Args:
        pruner: The :class:`~mmrazor_ext.pruners.ChannelPruner`.
        bn_stats: Also restore the running statistics of every BatchNorm of
            the pruner's model (adaptive BN overwrites them).
    """
    previous = pruner.subnet
    saved = bn_state(pruner.model) if bn_stats else None
    try:
        yield
    finally:
        if saved is not None:
            load_bn_state(pruner.model, saved)
        apply_subnet(pruner, previous)


def _cache(model: nn.Module, batches: Iterable, num: int | None
           ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    res = []
    with torch.no_grad():
        for batch in itertools.islice(batches, num):
            inputs, labels = to_tensors(model, batch, 'AdaptiveBNEvaluator')
            res.append((inputs.detach(), labels.detach()))
    return res


class AdaptiveBNEvaluator:
    """Scores subnets of a :class:`~mmrazor_ext.pruners.ChannelPruner`.

    Args:
        pruner: The pruner whose model is evaluated in masked mode.
        train_batches: Training batches for BN recalibration (mmengine data
            batches or ``(inputs, labels)``); the first ``bn_batches`` are
            cached.
        val_batches: Held-out batches (a val loader or a fixed subset of
            the training set); the first ``val_max_batches`` are cached.
        bn_batches: K, the number of recalibration batches (0: keep the
            trained statistics).
        val_max_batches: Held-out batches to use (None: all).
        forward: ``forward(model, inputs) -> logits`` (default: mmengine
            ``mode='tensor'`` or a plain call).
        latency: Also time the exported model on CPU (``latency_ms``).
        latency_shape: Input shape for timing (default: the pruner's example
            inputs with batch ``latency_batch``).
        latency_batch: Batch size used when ``latency_shape`` is None.
        latency_repeats: Timed runs per candidate (median).
        mode: ``'masked'`` (masks on the shared model) or ``'export'``
            (recalibrate and score the exported subnet).
    """

    def __init__(self, pruner, train_batches: Iterable,
                 val_batches: Iterable, bn_batches: int = 10,
                 val_max_batches: int | None = None,
                 forward: Callable | None = None, latency: bool = False,
                 latency_shape: tuple | None = None, latency_batch: int = 64,
                 latency_repeats: int = 10, mode: str = 'masked'):
        if mode not in ('masked', 'export'):
            raise ValueError(f"mode must be 'masked' or 'export', got "
                             f'{mode!r}')
        self.mode = mode
        if bn_batches < 0:
            raise ValueError(f'bn_batches must be >= 0, got {bn_batches}')
        self.pruner = pruner
        self.model = pruner.model
        self.forward = forward
        self.bn_batches = int(bn_batches)
        self.bn_cache = _cache(self.model, train_batches, self.bn_batches)
        if self.bn_batches and len(self.bn_cache) < self.bn_batches:
            raise ValueError(f'bn_batches={self.bn_batches} but the training '
                             f'data gave only {len(self.bn_cache)} batches')
        self.val_cache = _cache(self.model, val_batches, val_max_batches)
        if not self.val_cache:
            raise ValueError('AdaptiveBNEvaluator: the held-out data is empty')
        self.latency = bool(latency)
        if latency_shape is None:
            x = pruner.example_inputs[0]
            latency_shape = (latency_batch, *x.shape[1:])
        self.latency_shape = tuple(latency_shape)
        self.latency_repeats = int(latency_repeats)
        self.num_evaluations = 0
        self.total_time = 0.0

    @property
    def original_flops(self) -> int:
        return self.pruner.original_flops

    def evaluate(self, subnet: Mapping[str, torch.Tensor] | None) -> dict:
        """Top-1 (%) after adaptive BN, MACs, params (and latency) of
        ``subnet`` (``None``: the dense model). The model's BN statistics and
        previous masks are restored afterwards, also on errors."""
        t0 = time.perf_counter()
        pruner = self.pruner
        with preserve_subnet(pruner):
            apply_subnet(pruner, subnet)
            flops = pruner.estimate_flops(pruner.subnet)
            res = {'flops': flops,
                   'flops_ratio': flops / pruner.original_flops,
                   'params': pruner.estimate_params(pruner.subnet)}
            small = None
            if self.mode == 'export' or self.latency:
                small = pruner.export(check=False)
            net = small if self.mode == 'export' else self.model
            if self.bn_batches:
                recalibrate_bn(net, self.bn_cache, self.bn_batches,
                               forward=self.forward)
            res['top1'] = evaluate_top1(net, self.val_cache,
                                        forward=self.forward)
            if self.latency:
                x = torch.randn(self.latency_shape)
                res['latency_ms'] = 1e3 * measure_latency(
                    small, x, warmup=2, repeats=self.latency_repeats)
        self.num_evaluations += 1
        self.total_time += time.perf_counter() - t0
        return res
