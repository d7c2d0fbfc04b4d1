"""Runner train loops of mmrazor_ext (``train_cfg=dict(type=...)``).

Importing this package registers :class:`AutoSlimSearchLoop`,
:class:`HybridSearchLoop` and :class:`ResumableEpochBasedTrainLoop` in
:data:`mmrazor_ext.registry.LOOPS`. The loops
reach the algorithms and searchers they drive lazily, inside ``run``, so
that this package can be imported from anywhere below ``algorithms/``.
"""
from .autoslim_search_loop import AutoSlimSearchLoop
from .hybrid_search_loop import HybridSearchLoop
from .recipe_loop import RecipeLoop
from .resumable_loop import ResumableEpochBasedTrainLoop
from .search_loop import SearchLoop

__all__ = ['AutoSlimSearchLoop', 'HybridSearchLoop', 'RecipeLoop',
           'ResumableEpochBasedTrainLoop', 'SearchLoop']
