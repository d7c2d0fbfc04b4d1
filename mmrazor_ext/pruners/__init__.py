"""Channel pruners (seed API), ratio sampling and FLOPs-target search."""
from .channel_pruner import ChannelPruner, load_subnet

__all__ = ['ChannelPruner', 'load_subnet']
