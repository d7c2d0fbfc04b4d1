"""BN-scale importance (Liu et al., "Network Slimming", ICCV 2017): |gamma|."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mmrazor_ext.registry import METRICS

from .base import ChannelMetric, scatter_to_spaces


@METRICS.register_module('bn_scale')
class BNScaleMetric(ChannelMetric):
    """Score of a unit = sum of |gamma| of the BatchNorms normalising it.

    A space without an affine BatchNorm scores 0 everywhere; that is an
    error (naming the space) rather than a silent uniform choice.

    ``contents`` (optional): ``{bn layer name: gamma}`` overriding weights.
    """

    def __call__(self, graph, model: nn.Module,
                 contents: dict[str, Any] | None = None
                 ) -> dict[str, torch.Tensor]:
        gammas = {}
        for name, rec in graph.layers.items():
            if rec.kind != 'bn':
                continue
            weight = getattr(model.get_submodule(name), 'weight', None)
            if weight is not None:
                gammas[name] = weight.detach().abs()
        for name, value in (contents or {}).items():
            if name not in graph.layers or graph.layers[name].kind != 'bn':
                raise KeyError(f'bn_scale: {name!r} is not a BatchNorm layer '
                               'of the graph')
            gammas[name] = torch.as_tensor(value).abs()
        scores = scatter_to_spaces(graph, gammas, role='out', reduce='sum')
        missing = [n for n, s in scores.items() if not s.any()]
        if missing:
            raise ValueError(f'bn_scale: spaces without an affine BatchNorm: '
                             f'{missing[:5]}; use another metric for them')
        return scores
