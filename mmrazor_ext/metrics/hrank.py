"""HRank (Lin et al., CVPR 2020): average rank of each channel's feature map."""
from __future__ import annotations

from mmrazor_ext.registry import METRICS

from .templates import FeatureStatMetric


@METRICS.register_module('hrank')
class HRankMetric(FeatureStatMetric):
    """Score of a unit = mean matrix rank of its feature maps over samples,
    averaged over the space's members (high rank = more information).

    ``contents``: ``{producer layer: (channels,) mean rank}`` from
    :meth:`FeatureCollector.mean_rank` with ``stats=('rank',)``, or the
    layer's raw ``(N, C, H, W)`` post-activation feature maps.
    """

    needs = 'rank'
