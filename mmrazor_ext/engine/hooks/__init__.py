"""Runner hooks of mmrazor_ext."""
from .amc_hook import AMCPruningHook
from .pruning_hook import PruningHook
from .rng_state_hook import RandomStateHook
from .sparsity_hook import SparsityHook

__all__ = ['SparsityHook']
__all__ += ['AMCPruningHook']
__all__ += ['PruningHook']
__all__ += ['RandomStateHook']
