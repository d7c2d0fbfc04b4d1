"""APoZ (Hu et al., 2016): average percentage of zero activations."""
from __future__ import annotations

import torch

from mmrazor_ext.registry import METRICS

from .templates import FeatureStatMetric


@METRICS.register_module('apoz')
class APoZMetric(FeatureStatMetric):
    """Score of a unit = 1 - APoZ of the post-activation features (channels
    that are mostly zero are the least important), averaged over members.

    ``contents``: ``{producer layer: (channels,) zero fraction}`` from
    :meth:`FeatureCollector.zero_fraction` with ``stats=('zeros',)``, or
    the layer's raw post-activation features (fraction of exact zeros per
    channel over samples and positions).
    """

    needs = 'zeros'

    def channel_scores(self, stat: torch.Tensor) -> torch.Tensor:
        return 1.0 - stat
