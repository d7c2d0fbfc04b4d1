"""Channel / layer importance metrics, one file each, in ``METRICS``."""
from .apoz import APoZMetric
from .base import ChannelMetric, producer_weights, scatter_to_spaces
from .block_base import BlockFeatureCollector, LayerMetric, hsic_terms
from .block_cka import BlockCKAMetric
from .block_cosine import BlockCosineMetric
from .block_weight_norm import BlockWeightNormMetric
from .bn_scale import BNScaleMetric
from .cdp import CDPMetric, cdp_scores
from .feature_collector import FeatureCollector, feature_points
from .fm_reconstruction import (
                                FMReconstructionCollector,
                                FMReconstructionMetric,
                                greedy_removal_order,
                                least_squares_weights,
)
from .hrank import HRankMetric
from .l1 import L1Metric
from .l2 import L2Metric
from .taylor import TaylorAccumulator, TaylorMetric

__all__ = [
    'BlockCKAMetric', 'BlockCosineMetric', 'BlockFeatureCollector',
    'BlockWeightNormMetric', 'LayerMetric', 'hsic_terms',
    'APoZMetric', 'BNScaleMetric', 'CDPMetric', 'ChannelMetric',
    'FMReconstructionCollector', 'FMReconstructionMetric', 'FeatureCollector',
    'HRankMetric', 'L1Metric', 'L2Metric', 'TaylorAccumulator', 'TaylorMetric',
    'cdp_scores', 'feature_points', 'greedy_removal_order',
    'least_squares_weights', 'producer_weights', 'scatter_to_spaces',
]
