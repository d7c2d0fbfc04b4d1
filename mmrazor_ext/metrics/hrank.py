"""HRank (Lin et al., CVPR 2020): average rank of each channel's feature map."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mmrazor_ext.registry import METRICS

from .base import ChannelMetric, scatter_to_spaces


@METRICS.register_module('hrank')
class HRankMetric(ChannelMetric):
    """Score of a unit = mean matrix rank of its feature maps over samples,
    averaged over the space's members (high rank = more information).

    ``contents``: ``{producer layer: (channels,) mean rank}`` from
    :meth:`FeatureCollector.mean_rank` with ``stats=('rank',)``.
    """

    requires_features = True

    def __call__(self, graph, model: nn.Module,
                 contents: dict[str, Any] | None = None
                 ) -> dict[str, torch.Tensor]:
        if not contents:
            raise ValueError('hrank needs contents={layer: mean rank} from '
                             'FeatureCollector(stats=("rank",))')
        unknown = set(contents) - set(graph.layers)
        if unknown:
            raise KeyError(f'hrank: unknown layers in contents: '
                           f'{sorted(unknown)}')
        scores = {k: torch.as_tensor(v).float() for k, v in contents.items()}
        return scatter_to_spaces(graph, scores, role='out', reduce='mean')
