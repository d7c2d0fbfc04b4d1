"""mmrazor_ext: channel pruning, search and sparse training for CNNs."""
from .version import __version__

__all__ = ['__version__']
