from .amc import AMCPruning, AMCPruningHook
from .autoslim import (
    AutoSlim,
    AutoSlimDDP,
    AutoSlimSearchLoop,
    GreedySlimmer,
    SandwichRule,
    greedy_slim,
    sandwich_train,
)
from .channel_pruning import IterativePruning, OneShotPruning
from .fusion import (
    LayerFusion,
    block_flops,
    load_fused_model,
    merge_flops_delta,
    plan_fusion,
    select_blocks,
)
from .hooks import PruningHook
from .hybrid_search import (
    HybridSearch,
    HybridSearchLoop,
    load_search_results,
    run_hybrid_search,
    write_search_results,
)
from .subnet import SubnetModel

__all__ = ['IterativePruning', 'LayerFusion', 'block_flops',
           'load_fused_model', 'merge_flops_delta', 'plan_fusion',
           'OneShotPruning', 'PruningHook',
           'select_blocks', 'HybridSearch', 'HybridSearchLoop',
           'load_search_results', 'run_hybrid_search', 'write_search_results',
           'SubnetModel', 'AutoSlim', 'AutoSlimDDP', 'AutoSlimSearchLoop',
           'GreedySlimmer', 'SandwichRule', 'greedy_slim', 'sandwich_train']
__all__ += ['AMCPruning', 'AMCPruningHook']
