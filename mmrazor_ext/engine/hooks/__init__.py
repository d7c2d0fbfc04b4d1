"""Runner hooks of mmrazor_ext."""
from .sparsity_hook import SparsityHook

__all__ = ['SparsityHook']
