"""Sparse training: MSBench-style schedulers and Knight block sparsity.

``build_sparse_scheduler(sparsity_config)`` -> scheduler;
``scheduler.prepare_sparse_model(model)`` attaches fake-sparse nodes.
``sparsity_config`` may also be a YAML path or UP's layout (top-level
``sparsity:`` with ``leaf_module:`` beside it): :func:`load_sparsity_yaml`.
"""
from .amba_scheduler import AmbaLevelPruneScheduler
from .ampere_scheduler import AmpereScheduler
from .base_scheduler import BaseScheduler, discover_layers
from .block_scheduler import BlockSparseScheduler
from .builder import build_sparse_scheduler
from .config import SparsityConfigError, load_sparsity_yaml
from .fake_sparse import FakeSparse, ProbMaskFakeSparse, STRFakeSparse
from .mask_generators import (
                              NormalMaskGenerator,
                              ProbMaskGenerator,
                              STRMaskGenerator,
                              block_aligned,
                              block_mask,
                              magnitude_mask,
                              nm_compliant,
                              nm_eligible,
                              nm_mask,
)
from .probmask_scheduler import ProbMaskScheduler
from .sparse_modules import (
                              dense_weight,
                              is_sparse_layer,
                              iter_sparse_layers,
                              strip_fake_sparse,
)
from .str_scheduler import STRScheduler

__all__ = [
    'AmbaLevelPruneScheduler', 'AmpereScheduler', 'BaseScheduler',
    'BlockSparseScheduler', 'FakeSparse', 'NormalMaskGenerator',
    'ProbMaskFakeSparse', 'ProbMaskGenerator', 'ProbMaskScheduler',
    'STRFakeSparse', 'STRMaskGenerator', 'STRScheduler', 'SparsityConfigError',
    'block_aligned', 'block_mask', 'build_sparse_scheduler', 'dense_weight',
    'discover_layers', 'is_sparse_layer', 'iter_sparse_layers',
    'load_sparsity_yaml', 'magnitude_mask',
    'nm_compliant', 'nm_eligible', 'nm_mask', 'strip_fake_sparse',
]
