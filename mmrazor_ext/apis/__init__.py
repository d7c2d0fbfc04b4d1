"""Knight-MC style facades."""
from .mc_pruning import MCPruning, load_pruning_config
from .mc_sparsity import MCSparsity

__all__ = ['MCSparsity']
__all__ += ['MCPruning', 'load_pruning_config']
