from .channel_pruning import IterativePruning, OneShotPruning
from .fusion import LayerFusion, block_flops, load_fused_model, select_blocks
from .hooks import PruningHook

__all__ = ['IterativePruning', 'LayerFusion', 'block_flops',
           'load_fused_model', 'OneShotPruning', 'PruningHook',
           'select_blocks']
