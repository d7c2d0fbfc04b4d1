"""Train a searched or pruned subnet (hybrid search, AutoSlim, AMC output).

:class:`SubnetModel` rebuilds the physically pruned model from a subnet
JSON (:meth:`ChannelPruner.save_subnet` format) and trains it like any
mmpretrain classifier: from the supernet's weights (``init_checkpoint``,
sliced to the kept channels) or from scratch. The structure is rebuilt in
``__init__`` from the JSON, so ``--resume`` and ``tools/test.py`` load the
small model's checkpoints directly.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from mmengine.logging import print_log
from torch import nn

from mmrazor_ext.algorithms.base import ArchitectureAlgorithm
from mmrazor_ext.estimators import get_model_complexity
from mmrazor_ext.pruners import load_subnet
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
    """

    def __init__(self, architecture: dict | nn.Module, subnet: str,
                 init_checkpoint: str | None = None,
                 from_scratch: bool = False,
                 example_shape: Sequence[int] | None = None,
                 data_preprocessor: dict | None = None,
                 init_cfg: dict | None = None):
        super().__init__(architecture, init_checkpoint, data_preprocessor,
                         init_cfg)
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
