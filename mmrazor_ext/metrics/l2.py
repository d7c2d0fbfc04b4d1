"""L2-norm filter importance (the ``p=2`` sibling of :mod:`.l1`)."""
from __future__ import annotations

import torch

from mmrazor_ext.registry import METRICS

from .templates import WeightMetric


@METRICS.register_module('l2')
class L2Metric(WeightMetric):
    """Score of a unit = sum over the space's producers of the RMS of the
    filter weights writing that unit (RMS, like l1's mean, keeps layers of
    different fan-in comparable).

    ``contents``: see :class:`~mmrazor_ext.metrics.WeightMetric`.
    """

    def filter_scores(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.float().reshape(weight.shape[0], -1).pow(2).mean(1) \
            .sqrt()
