"""Knight-MC style facades."""
from .mc_sparsity import MCSparsity

__all__ = ['MCSparsity']
