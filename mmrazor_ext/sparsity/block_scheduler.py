"""Knight-MC sparsity: ``CustomPruner`` (Cin32 x Cout64 blocks) and
``Pruner2to4``.

``CustomPruner`` zeroes whole tiles of 32 consecutive input channels shared
by 64 consecutive output filters (all kernel taps), the weakest tiles (mean
|w|) first, ``round(target_sparsity * tiles)`` per layer (at least one tile
kept, so a one-tile layer stays dense and the global sparsity can fall short
of the target on narrow networks). Only conv / linear
layers with kernels <= 8 and at least one full tile qualify; ragged edges
stay dense, so every zero region is exactly tile-aligned. ``Pruner2to4``
applies the 2:4 pattern to eligible layers (``target_sparsity`` must be
0.5). Masks are computed once from the (pretrained) weights and re-applied
after every optimizer step, as Knight retrains the sparse model.
"""
import math

import torch

from mmrazor_ext.registry import SPARSE_SCHEDULERS

from .base_scheduler import BaseScheduler, note
from .config import (
    Arg,
    SparsityConfigError,
    as_name_list,
    check_fraction,
    check_positive,
    check_str_list,
    one_of,
)
from .mask_generators import block_grid, block_mask, nm_eligible, nm_mask
from .sparse_modules import dense_weight


@SPARSE_SCHEDULERS.register_module()
class BlockSparseScheduler(BaseScheduler):
    """Knight's block (or 2:4) sparsity, fixed masks.

    Keyword Args:
        sparsity_method: ``'CustomPruner'`` or ``'Pruner2to4'``.
        target_sparsity: Fraction of tiles (CustomPruner) zeroed per layer;
            0.5 for Pruner2to4.
        block_in: Input channels per tile (32).
        block_out: Output filters per tile (64).
        max_kernel: Largest kernel side a sparsified layer may have (8).
        only_layer: If set, only these layers are candidates.
        no_prune_keyword / no_prune_layer: Layers kept dense.
    """

    ARGS = {
        **BaseScheduler.ARGS,
        'sparsity_method': Arg((str,), 'CustomPruner',
                               one_of('CustomPruner', 'Pruner2to4')),
        'target_sparsity': Arg((float,), 0.5, check_fraction),
        'block_in': Arg((int,), 32, check_positive),
        'block_out': Arg((int,), 64, check_positive),
        'max_kernel': Arg((int,), 8, check_positive),
        'only_layer': Arg((str, list, tuple), '', check_str_list,
                          'sparsify only these layers (Knight network list)'),
    }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.cfg['sparsity_method'] == 'Pruner2to4' and \
                self.cfg['target_sparsity'] != 0.5:
            raise SparsityConfigError(
                'scheduler.kwargs.target_sparsity: Pruner2to4 is 2:4 '
                f'(0.5), got {self.cfg["target_sparsity"]}')
        self._masks_ready = False

    def layer_filter(self, name, module):
        reason = super().layer_filter(name, module)
        if reason:
            return reason
        only = as_name_list(self.cfg['only_layer'])
        if only and name not in only:
            return 'not in only_layer'
        shape = tuple(dense_weight(module).shape)
        kernel = shape[2:]
        if kernel and max(kernel) > self.cfg['max_kernel']:
            return f'kernel {kernel} > {self.cfg["max_kernel"]}'
        if getattr(module, 'groups', 1) != 1:
            return 'grouped conv'
        if self.cfg['sparsity_method'] == 'Pruner2to4':
            if not nm_eligible(shape):
                return f'shape {shape} not 2:4 eligible'
        elif math.prod(block_grid(shape, self.cfg['block_in'],
                                  self.cfg['block_out'])) == 0:
            return (f'shape {shape} has no full {self.cfg["block_in"]}x'
                    f'{self.cfg["block_out"]} tile')
        return None

    @torch.no_grad()
    def compute_masks(self) -> None:
        """Masks from the current weights; pruned weights are zeroed."""
        for layer in self.layers.values():
            w = dense_weight(layer)
            if self.cfg['sparsity_method'] == 'Pruner2to4':
                mask = nm_mask(w, 2, 4)
            else:
                mask = block_mask(w, self.cfg['target_sparsity'],
                                  self.cfg['block_in'], self.cfg['block_out'])
            layer.weight_fake_sparse.set_mask(mask)
        self.apply_masks_to_weights()
        self._masks_ready = True
        note(f'BlockSparseScheduler ({self.cfg["sparsity_method"]}): '
             f'{len(self.layers)} layer(s), global sparsity '
             f'{100 * self.global_sparsity():.2f}%')

    def update(self, cur_iter: int, enter_stage: bool = True) -> None:
        super().update(cur_iter)
        if not self._masks_ready:
            self.compute_masks()

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        self.apply_masks_to_weights()

    def state_dict(self):
        state = super().state_dict()
        state['masks_ready'] = bool(self._masks_ready)
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self._masks_ready = bool(state.get('masks_ready', False))

