"""L1-norm filter importance (Li et al., "Pruning Filters for Efficient
ConvNets", ICLR 2017)."""
from __future__ import annotations

import torch

from mmrazor_ext.registry import METRICS

from .templates import WeightMetric


@METRICS.register_module('l1')
class L1Metric(WeightMetric):
    """Score of a unit = sum over the space's producers of the mean absolute
    weight of the filters writing that unit.

    The per-filter mean (not sum) keeps layers of different fan-in (3x3 vs
    1x1, grouped vs dense) on one scale when a residual space sums them.
    ``contents``: see :class:`~mmrazor_ext.metrics.WeightMetric`.
    """

    def filter_scores(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.abs().reshape(weight.shape[0], -1).mean(1)
