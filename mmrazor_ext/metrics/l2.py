"""L2-norm filter importance (the ``p=2`` sibling of :mod:`.l1`)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mmrazor_ext.registry import METRICS

from .base import ChannelMetric, producer_weights, scatter_to_spaces


@METRICS.register_module('l2')
class L2Metric(ChannelMetric):
    """Score of a unit = sum over the space's producers of the RMS of the
    filter weights writing that unit (RMS, like l1's mean, keeps layers of
    different fan-in comparable).

    ``contents`` (optional): ``{layer name: weight}`` overriding weights.
    """

    def __call__(self, graph, model: nn.Module,
                 contents: dict[str, Any] | None = None
                 ) -> dict[str, torch.Tensor]:
        weights = producer_weights(graph, model)
        if contents:
            unknown = set(contents) - set(graph.layers)
            if unknown:
                raise KeyError(f'l2: unknown layers in contents: '
                               f'{sorted(unknown)}')
            weights.update(contents)
        scores = {name: w.detach().float().reshape(w.shape[0], -1)
                  .pow(2).mean(1).sqrt() for name, w in weights.items()}
        return scatter_to_spaces(graph, scores, role='out', reduce='sum')
