"""Block importance from the cosine similarity of its input and output.

For a residual block ``y = act(x + f(x))``, ``cos(x, y)`` near 1 means the
branch ``f`` barely changes the direction of the features, so removing the
block (identity) changes little. Importance = ``1 - mean cosine``; blocks
whose input and output shapes differ score ``inf`` (never the weakest).
"""
from __future__ import annotations

import math

from torch import nn

from mmrazor_ext.registry import METRICS

from .block_base import LayerMetric


@METRICS.register_module('block_cosine')
class BlockCosineMetric(LayerMetric):
    """``1 - mean over samples of cos(block input, block output)``.

    ``contents``: :meth:`BlockFeatureCollector.statistics`.
    """

    requires_features = True

    def __call__(self, blocks, model: nn.Module,
                 contents: dict | None = None) -> dict[str, float]:
        contents = self._check(blocks, contents, 'block_cosine')
        scores = {}
        for name, stats in contents.items():
            cos = stats['cos_sum'] / max(stats['n'], 1)
            scores[name] = math.inf if math.isnan(cos) else 1.0 - cos
        return scores
