"""Block importance from linear CKA between a block's input and output.

A residual block whose output is (up to an isotropic scaling and an
orthogonal transform) its input changes the representation little: linear
CKA (Kornblith et al., ICML 2019) near 1. Importance = ``1 - CKA``.
"""
from __future__ import annotations

import math

from mmrazor_ext.registry import METRICS

from .block_base import BlockStatMetric


@METRICS.register_module('block_cka')
class BlockCKAMetric(BlockStatMetric):
    """``1 - linear CKA(block input, block output)`` per block.

    ``contents``: :meth:`BlockFeatureCollector.statistics` (needs at least
    two samples per batch; more batches give a steadier estimate).
    """

    def block_score(self, stats: dict) -> float:
        kl, kk, ll = (float(v) for v in stats['hsic'])
        denom = math.sqrt(max(kk * ll, 0.0))
        # a constant feature (e.g. zero block output) has no similarity
        cka = kl / denom if denom > 0 else 0.0
        return 1.0 - cka
