"""Runner hooks of mmrazor_ext (one file each; importing registers them)."""
from .amc_hook import AMCPruningHook
from .progress_bar_hook import ProgressBarHook
from .pruning_hook import PruningHook, SubnetReconstructHook
from .rng_state_hook import RandomStateHook
from .sparsity_hook import SparsityHook

__all__ = ['AMCPruningHook', 'ProgressBarHook', 'PruningHook',
           'RandomStateHook', 'SparsityHook', 'SubnetReconstructHook']
