"""APoZ (Hu et al., 2016): average percentage of zero activations."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mmrazor_ext.registry import METRICS

from .base import ChannelMetric, scatter_to_spaces


@METRICS.register_module('apoz')
class APoZMetric(ChannelMetric):
    """Score of a unit = 1 - APoZ of the post-activation features (channels
    that are mostly zero are the least important), averaged over members.

    ``contents``: ``{producer layer: (channels,) zero fraction}`` from
    :meth:`FeatureCollector.zero_fraction` with ``stats=('zeros',)``.
    """

    requires_features = True

    def __call__(self, graph, model: nn.Module,
                 contents: dict[str, Any] | None = None
                 ) -> dict[str, torch.Tensor]:
        if not contents:
            raise ValueError('apoz needs contents={layer: zero fraction} from '
                             'FeatureCollector(stats=("zeros",))')
        unknown = set(contents) - set(graph.layers)
        if unknown:
            raise KeyError(f'apoz: unknown layers in contents: '
                           f'{sorted(unknown)}')
        scores = {k: 1.0 - torch.as_tensor(v).float()
                  for k, v in contents.items()}
        return scatter_to_spaces(graph, scores, role='out', reduce='mean')
