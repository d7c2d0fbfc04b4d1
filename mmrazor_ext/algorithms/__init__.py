from mmrazor_ext.pruners.pruned_model import (
    load_fused_model,
    load_pruned_model,
    pruned_structure,
    save_pruned_model,
)

from .amc import AMCPruning
from .autoslim import (
    AutoSlim,
    AutoSlimDDP,
    sandwich_train,
)
from .autoslim_sandwich import SandwichRule
from .base import ArchitectureAlgorithm, PruningAlgorithm
from .channel_pruning import IterativePruning, OneShotPruning
from .fusion import (
    LayerFusion,
    block_flops,
    merge_flops_delta,
    plan_fusion,
    select_blocks,
)
from .hybrid_search import (
    HybridSearch,
    load_search_results,
    run_hybrid_search,
    write_search_results,
)
from .recipe import CompressionRecipe, load_recipe_model
from .recipe_deploy import deploy_model, export_onnx, measure_stage
from .recipe_report import write_recipe_report
from .subnet import SubnetModel

__all__ = ['IterativePruning', 'LayerFusion', 'block_flops',
           'load_fused_model', 'merge_flops_delta', 'plan_fusion',
           'OneShotPruning',
           'select_blocks', 'HybridSearch',
           'load_search_results', 'run_hybrid_search', 'write_search_results',
           'SubnetModel', 'AutoSlim', 'AutoSlimDDP', 'SandwichRule',
           'sandwich_train']
__all__ += ['AMCPruning']
__all__ += ['deploy_model', 'export_onnx', 'measure_stage',
            'write_recipe_report']
__all__ += ['CompressionRecipe', 'load_recipe_model']
__all__ += ['ArchitectureAlgorithm', 'PruningAlgorithm', 'load_pruned_model',
            'pruned_structure', 'save_pruned_model']
