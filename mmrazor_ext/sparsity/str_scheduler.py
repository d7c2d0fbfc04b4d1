"""STR (Soft Threshold Reparameterization) as a named scheduler.

MSBench runs STR as ``BaseScheduler`` + ``STRMaskGenerator`` +
``STRFakeSparse``; ``STRScheduler`` is that combination with the right
defaults, so ``scheduler=dict(type='STRScheduler')`` alone is enough. The
thresholds ``s`` are ordinary parameters: train them with the weights (weight
decay on ``s`` is what drives the sparsity up).
"""
from mmrazor_ext.registry import SPARSE_SCHEDULERS

from .base_scheduler import BaseScheduler


@SPARSE_SCHEDULERS.register_module()
class STRScheduler(BaseScheduler):
    """``BaseScheduler`` with STR defaults (see module doc).

    Keyword Args:
        no_prune_keyword / no_prune_layer: Layers kept dense.
        default_input_shape: Input shape for MAC statistics.
    """

    default_mask_generator = 'STRMaskGenerator'
    default_fake_sparse = 'STRFakeSparse'
    allowed_fake_sparse = ('STRFakeSparse',)

    def thresholds(self):
        """``{layer: sigmoid(s)}``, the current magnitude thresholds."""
        return {n: float(layer.weight_fake_sparse.threshold())
                for n, layer in self.layers.items()}
