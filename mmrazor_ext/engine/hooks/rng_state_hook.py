"""``RandomStateHook``: checkpoints carry the RNG states; resume restores them.

The project's Runner adds this hook to every run. A checkpoint gets
``meta['rng_state']``: the states of python ``random``, numpy's global RNG,
torch's CPU generator and (when present) the CUDA generators, as plain
lists and tensors (they load with ``weights_only=True``), and the seed of
the resumable train loader.

The states are captured once per training iteration count (an epoch
checkpoint and a ``best_*`` checkpoint written after validation share it)
and *applied at the next training iteration*, in the uninterrupted run as
well as in a resumed one. Whatever happens between the checkpoint and the
next iteration (validation, data-loader start-up) therefore cannot make the
two runs diverge. Per-sample data randomness is handled by
:mod:`mmrazor_ext.engine.loops.resumable_loop`; this hook covers randomness in the
model and the training step (dropout, mixup, random widths ...).
"""
from __future__ import annotations

import random

import numpy as np
import torch
from mmengine.hooks import Hook

from mmrazor_ext.registry import HOOKS

META_KEY = 'rng_state'


def capture_rng_state() -> dict:
    """The global RNG states as plain containers and tensors."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        'python': [version, list(internal), gauss],
        'numpy': [str(name), [int(k) for k in keys], int(pos),
                  int(has_gauss), float(cached)],
        'torch': torch.random.default_generator.get_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of :func:`capture_rng_state`."""
    version, internal, gauss = state['python']
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    name, keys, pos, has_gauss, cached = state['numpy']
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), int(pos),
                         int(has_gauss), float(cached)))
    torch.random.default_generator.set_state(state['torch'].cpu())
    if state.get('cuda') and torch.cuda.is_available():
        n = min(len(state['cuda']), torch.cuda.device_count())
        torch.cuda.set_rng_state_all([s.cpu() for s in state['cuda'][:n]])


@HOOKS.register_module()
class RandomStateHook(Hook):
    """Save the RNG states in checkpoints and restore them on resume."""

    # Before every other hook's ``before_train_iter``.
    priority = 'HIGHEST'

    def __init__(self):
        self._captured: tuple[int, dict] | None = None
        self._pending: dict | None = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if self._captured is None or self._captured[0] != runner.iter:
            self._captured = (runner.iter, capture_rng_state())
        state = self._captured[1]
        checkpoint.setdefault('meta', {})[META_KEY] = state
        # the uninterrupted run continues from the same states as a resumed
        self._pending = state

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
        state = meta.get(META_KEY) if isinstance(meta, dict) else None
        if state is not None and getattr(runner, 'resuming', False):
            self._pending = state

    def before_train_iter(self, runner, batch_idx: int,
                          data_batch=None) -> None:
        if self._pending is not None:
            restore_rng_state(self._pending)
            self._pending = None
