"""Channel pruners (seed API), prune-ratio sampling, MACs-target search,
MACs / params estimates, saved subnets and reconstruction after pruning."""
from .channel_pruner import ChannelPruner, load_subnet
from .cost import SubnetCost
from .reconstruction import METHODS as RECONSTRUCTION_METHODS
from .reconstruction import reconstruct
from .refit import LeastSquaresStats, check_ridge, solve_consumer
from .report import (
                     PinnedChannelsError,
                     PinnedRow,
                     check_prunable,
                     format_report,
                     pinned_report,
)
from .sampling import SubnetSampler, check_prune_ratio
from .subnet_io import SubnetFileError

__all__ = ['ChannelPruner', 'LeastSquaresStats', 'RECONSTRUCTION_METHODS',
           'SubnetCost', 'SubnetFileError', 'SubnetSampler',
           'check_prune_ratio', 'check_ridge', 'load_subnet', 'reconstruct',
           'solve_consumer', 'PinnedChannelsError', 'PinnedRow',
           'check_prunable', 'format_report', 'pinned_report']
