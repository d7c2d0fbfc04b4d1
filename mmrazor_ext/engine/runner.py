"""The project's Runner: mmengine's, with one fix for algorithms.

Algorithms keep plain Python state (pruning step, masks, search progress) in
``get_extra_state`` so that checkpoints carry it. mmengine's
``_init_model_weights`` broadcasts *every* ``state_dict`` entry from rank 0
after ``init_weights()``, which fails under torchrun on such an entry
(``TypeError: data should be a Tensor ... but got 0``). Here only tensors
are broadcast; extra state is rebuilt identically on each rank from the
config, and ``--resume`` restores it from the checkpoint.
"""
from mmengine.dist import broadcast
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner as _Runner

from mmrazor_ext.registry import RUNNERS

__all__ = ['Runner']


@RUNNERS.register_module()
class Runner(_Runner):
    """mmengine's Runner; ``init_weights`` sync skips non-tensor state."""

    def _init_model_weights(self) -> None:
        model = self.model.module if is_model_wrapper(self.model) \
            else self.model
        if hasattr(model, 'init_weights'):
            model.init_weights()
            for value in model.state_dict().values():
                if hasattr(value, 'is_floating_point'):  # a tensor
                    broadcast(value)
