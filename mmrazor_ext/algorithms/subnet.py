"""Train a searched or pruned subnet (hybrid search, AutoSlim, AMC output).

:class:`SubnetModel` rebuilds the physically pruned model from a subnet
JSON (:meth:`ChannelPruner.save_subnet` format) and trains it like any
mmpretrain classifier: from the supernet's weights (``init_checkpoint``,
sliced to the kept channels) or from scratch. The structure is rebuilt in
``__init__`` from the JSON, so ``--resume`` and ``tools/test.py`` load the
small model's checkpoints directly.

With ``reconstruct=dict(method='least_squares', ...)`` (and sliced, not
from-scratch weights) the dense model of ``init_checkpoint`` is kept until
training starts; :class:`~mmrazor_ext.engine.hooks.SubnetReconstructHook`
then masks it with the subnet, refits the consumers of the pruned channels
to the dense model's outputs on training batches
(:meth:`ChannelPruner.reconstruct`) and copies the refitted weights into
the small model in place (the optimizer keeps its parameters). A resumed
run skips this: the checkpoint has the refitted, fine-tuned weights. For an
AutoSlim supernet the "dense" model is its largest width.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from mmengine.logging import print_log
from torch import nn

from mmrazor_ext.algorithms.base import (
    ArchitectureAlgorithm,
    check_reconstruct,
)
from mmrazor_ext.estimators import get_model_complexity
from mmrazor_ext.pruners import ChannelPruner, load_subnet, subnet_io
from mmrazor_ext.registry import MODELS

__all__ = ['SubnetModel']


@MODELS.register_module()
class SubnetModel(ArchitectureAlgorithm):
    """A subnet of ``architecture`` given by a subnet JSON.

    Args:
        architecture: The original (unpruned) model config.
        subnet: Path of the subnet JSON.
        init_checkpoint: Supernet / dense weights to slice from (safe
            loader). Without it the subnet starts from the architecture's
            own initialisation.
        from_scratch: Re-initialise every layer after slicing (train the
            searched structure from scratch).
        example_shape: Override the input shape stored in the JSON.
        data_preprocessor: As for the other algorithms.
        reconstruct: None (off) or the ``reconstruct`` option of
            :class:`~mmrazor_ext.algorithms.base.PruningAlgorithm`: refit
            the sliced weights against the dense ``init_checkpoint`` model
            when training starts (needs ``SubnetReconstructHook`` in
            ``custom_hooks``, ``init_checkpoint`` and not ``from_scratch``).
    """

    def __init__(self, architecture: dict | nn.Module, subnet: str,
                 init_checkpoint: str | None = None,
                 from_scratch: bool = False,
                 example_shape: Sequence[int] | None = None,
                 data_preprocessor: dict | None = None,
                 init_cfg: dict | None = None,
                 reconstruct: dict | None = None):
        super().__init__(architecture, init_checkpoint, data_preprocessor,
                         init_cfg)
        self.reconstruct_cfg = check_reconstruct(reconstruct)
        if self.reconstruct_cfg is not None and (
                from_scratch or not init_checkpoint):
            raise ValueError('reconstruct: needs the dense weights to '
                             'reproduce (init_checkpoint) and sliced, not '
                             'from_scratch, weights')
        inputs = None if example_shape is None else \
            (torch.randn(*example_shape),)
        dense = get_model_complexity(self.architecture, inputs) \
            if inputs is not None else None
        small = load_subnet(self.architecture, subnet, inputs,
                            load_weights=False)
        self.from_scratch = bool(from_scratch)
        if self.from_scratch:
            for m in small.modules():
                if m is not small and hasattr(m, 'reset_parameters'):
                    m.reset_parameters()
        # the dense model waits (outside the module tree) for the hook
        self.__dict__['_dense'] = self.architecture \
            if self.reconstruct_cfg is not None else None
        self.__dict__['_example_inputs'] = inputs
        self.architecture = small
        self.subnet_file = subnet
        msg = f'subnet {subnet}: ' + (
            'trained from scratch' if self.from_scratch else
            f'weights sliced from {init_checkpoint or "the initialisation"}')
        if dense is not None:
            cx = get_model_complexity(small, inputs)
            msg += (f'; FLOPs {dense["flops"] / 1e6:.2f} M -> '
                    f'{cx["flops"] / 1e6:.2f} M')
        print_log(msg, logger='current')

    def init_weights(self) -> None:
        # Weights were sliced (or reset) in __init__; the Runner's
        # init_weights() would overwrite them from the architecture's
        # init_cfg.
        return

    @property
    def reconstruction_pending(self) -> bool:
        """Whether :meth:`reconstruct_from_dense` has work to do."""
        return self._dense is not None

    def reconstruct_from_dense(self, batches: Iterable) -> dict | None:
        """Refit the small model's consumers of pruned channels to the dense
        model's outputs (see the module docstring), once.

        Returns:
            The :meth:`ChannelPruner.reconstruct` report (None if nothing
            was pending).

        Raises:
            ValueError: A refit needs a new bias parameter (a consumer
                with neither bias nor BatchNorm after it), which the small
                model and its optimizer do not have.
        """
        dense = self._dense
        if dense is None:
            return None
        data = subnet_io.read_subnet(self.subnet_file)
        inputs = self._example_inputs or subnet_io.example_inputs_of(
            data, self.subnet_file)
        device = next(iter(self.architecture.parameters())).device
        dense.to(device)  # the Runner moved only the small model
        pruner = ChannelPruner(dense, tuple(x.to(device) for x in inputs),
                               ignore_layers=data.get('ignore_layers', ()))
        pruner.set_subnet(subnet_io.kept_masks(data, pruner.channel_spaces,
                                               self.subnet_file))
        report = pruner.reconstruct(batches, **self.reconstruct_cfg)
        new = [n for n, r in report['layers'].items()
               if r.get('offset_to') == 'new_bias']
        if new:
            raise ValueError(f'reconstruct: layers {new} would need a new '
                             'bias (no bias and no BatchNorm after them); '
                             "leave them out with reconstruct.layers")
        state = pruner.export().state_dict()
        self.architecture.load_state_dict(state)
        self.__dict__['_dense'] = None
        return report
