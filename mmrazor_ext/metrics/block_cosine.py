"""Block importance from the cosine similarity of its input and output.

For a residual block ``y = act(x + f(x))``, ``cos(x, y)`` near 1 means the
branch ``f`` barely changes the direction of the features, so removing the
block (identity) changes little. Importance = ``1 - mean cosine``; blocks
whose input and output shapes differ score ``inf`` (never the weakest).
"""
from __future__ import annotations

import math

from mmrazor_ext.registry import METRICS

from .block_base import BlockStatMetric


@METRICS.register_module('block_cosine')
class BlockCosineMetric(BlockStatMetric):
    """``1 - mean over samples of cos(block input, block output)``.

    ``contents``: :meth:`BlockFeatureCollector.statistics`.
    """

    def block_score(self, stats: dict) -> float:
        cos = stats['cos_sum'] / max(stats['n'], 1)
        return math.inf if math.isnan(cos) else 1.0 - cos
