"""Channel / layer importance metrics, one file each, in ``METRICS``.

Every module of this package is imported (see the end of this file), so a
new metric is one file with its ``@METRICS.register_module('name')``.
"""
import importlib as _importlib
import pkgutil as _pkgutil

from .apoz import APoZMetric
from .base import ChannelMetric, producer_weights, scatter_to_spaces
from .block_base import (
    BlockFeatureCollector,
    BlockStatMetric,
    LayerMetric,
    hsic_terms,
)
from .block_cka import BlockCKAMetric
from .block_cosine import BlockCosineMetric
from .block_weight_norm import BlockWeightNormMetric
from .bn_scale import BNScaleMetric
from .cdp import CDPMetric, cdp_scores
from .feature_collector import (
    FeatureCollector,
    collect_contents,
    collector_options,
    feature_points,
)
from .feature_stats import (
    FEATURE_RULES,
    LABELS_KEY,
    FeatureLayout,
    FeatureRule,
    feature_layout,
    register_feature_rule,
    statistic_contents,
)
from .fm_reconstruction import (
    FMReconstructionCollector,
    FMReconstructionMetric,
    gram_from_inputs,
    greedy_removal_order,
    least_squares_weights,
)
from .hrank import HRankMetric
from .l1 import L1Metric
from .l2 import L2Metric
from .taylor import TaylorAccumulator, TaylorMetric
from .templates import FeatureStatMetric, WeightMetric

__all__ = [
    'BlockCKAMetric', 'BlockCosineMetric', 'BlockFeatureCollector',
    'BlockStatMetric', 'BlockWeightNormMetric', 'LayerMetric', 'hsic_terms',
    'APoZMetric', 'BNScaleMetric', 'CDPMetric', 'ChannelMetric',
    'FMReconstructionCollector', 'FMReconstructionMetric', 'FeatureCollector',
    'FEATURE_RULES', 'FeatureLayout', 'FeatureRule', 'LABELS_KEY',
    'feature_layout', 'gram_from_inputs', 'register_feature_rule',
    'statistic_contents',
    'FeatureStatMetric', 'HRankMetric', 'L1Metric', 'L2Metric',
    'TaylorAccumulator', 'TaylorMetric', 'WeightMetric', 'cdp_scores',
    'collect_contents', 'collector_options', 'feature_points',
    'greedy_removal_order', 'least_squares_weights', 'producer_weights',
    'scatter_to_spaces',
]

# Metrics not listed above register themselves on import.
for _mod in _pkgutil.iter_modules(__path__):
    _importlib.import_module(f'{__name__}.{_mod.name}')
