"""L1-norm filter importance (Li et al., "Pruning Filters for Efficient
ConvNets", ICLR 2017)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mmrazor_ext.registry import METRICS

from .base import ChannelMetric, producer_weights, scatter_to_spaces


@METRICS.register_module('l1')
class L1Metric(ChannelMetric):
    """Score of a unit = sum over the space's producers of the mean absolute
    weight of the filters writing that unit.

    The per-filter mean (not sum) keeps layers of different fan-in (3x3 vs
    1x1, grouped vs dense) on one scale when a residual space sums them.

    ``contents`` (optional): ``{layer name: weight}`` with output channels
    on dim 0, replacing the model's weights for those layers (e.g. weights
    of another checkpoint); layers not listed use their current weights.
    """

    def __call__(self, graph, model: nn.Module,
                 contents: dict[str, Any] | None = None
                 ) -> dict[str, torch.Tensor]:
        weights = producer_weights(graph, model)
        if contents:
            unknown = set(contents) - set(graph.layers)
            if unknown:
                raise KeyError(f'l1: unknown layers in contents: '
                               f'{sorted(unknown)}')
            weights.update(contents)
        scores = {name: w.detach().abs().reshape(w.shape[0], -1).mean(1)
                  for name, w in weights.items()}
        return scatter_to_spaces(graph, scores, role='out', reduce='sum')
