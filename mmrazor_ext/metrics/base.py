"""Interface of channel-importance metrics.

A metric is a class in :data:`mmrazor_ext.registry.METRICS` (one file per
metric, ``@METRICS.register_module('name')``) whose instances are called as
``metric(graph, model, contents) -> {space name: score tensor}`` with one
score per unit of each ChannelSpace (higher = more important). ``graph`` is
a :class:`mmrazor_ext.graph.ChannelGraph`; ``contents`` maps layer names to
weights or collected features (``None``: the metric reads weights itself).
Most metrics compute a per-channel score for some layers and hand it to
:func:`scatter_to_spaces`, which aggregates over every layer of a space.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ['ChannelMetric', 'scatter_to_spaces', 'producer_weights']


class ChannelMetric:
    """Base class of channel-importance metrics."""

    #: whether ``contents`` must hold collected features (not weights)
    requires_features: bool = False

    def __call__(self, graph, model: nn.Module,
                 contents: dict[str, Any] | None = None
                 ) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def producer_weights(graph, model: nn.Module) -> dict[str, torch.Tensor]:
    """Weights of all producer layers, output channel first.

    Returns:
        ``{layer name: weight}`` for conv / linear layers that create a
        space's channels (transposed-conv weights are transposed).
    """
    res = {}
    for name, rec in graph.layers.items():
        if not rec.producer:
            continue
        w = model.get_submodule(name).weight.detach()
        if rec.kind == 'conv_transpose':
            w = w.transpose(0, 1)
        elif rec.kind == 'embedding':
            w = w.t()
        res[name] = w
    return res


def scatter_to_spaces(graph, layer_scores: dict[str, torch.Tensor],
                      role: str = 'out', reduce: str = 'sum'
                      ) -> dict[str, torch.Tensor]:
    """Aggregate per-channel scores of layers into per-unit space scores.

    Args:
        graph: The ChannelGraph.
        layer_scores: ``{layer name: 1-D score per channel of its role}``.
        role: Which side of the layers the scores describe (``out``/``in``).
        reduce: ``sum`` or ``mean`` over the channels mapped to one unit
            (several layers of a residual space, several channels of a
            grouped unit).

    Returns:
        ``{space name: float tensor (num_channels,)}`` for every space;
        units no score reached get 0.
    """
    sums = {n: torch.zeros(s.num_channels) for n, s in graph.spaces.items()}
    counts = {n: torch.zeros(s.num_channels) for n, s in graph.spaces.items()}
    for layer, score in layer_scores.items():
        score = score.detach().float().reshape(-1).cpu()
        for space, layer_idx, unit_idx in graph.channel_map(layer, role):
            sums[space].index_add_(0, unit_idx, score[layer_idx])
            counts[space].index_add_(0, unit_idx,
                                     torch.ones(unit_idx.numel()))
    if reduce == 'mean':
        return {n: sums[n] / counts[n].clamp(min=1) for n in sums}
    if reduce != 'sum':
        raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
    return sums
