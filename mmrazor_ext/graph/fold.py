"""Conv / linear + BatchNorm folding of any traceable model, for deploy.

:meth:`ChannelPruner.export(fuse_bn=True)` folds the pairs its channel graph
found; :func:`fold_bn` does the same for a model that has no pruner (a
layer-pruned model, a checkpoint given to ``tools/deploy/export_onnx.py``),
tracing it with the project's tracer.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from .export import fuse_conv_bn
from .patterns import conv_bn_pairs
from .tracer import trace_model

__all__ = ['find_conv_bn_pairs', 'fold_bn']

def find_conv_bn_pairs(model: nn.Module,
                       example_inputs: torch.Tensor | Sequence[torch.Tensor]
                       | None = None,
                       leaf_modules: Iterable[type | str] = ()
                       ) -> list[tuple[str, str]]:
    """Foldable ``(conv or linear, bn)`` pairs of ``model`` (see
    :func:`~mmrazor_ext.graph.patterns.conv_bn_pairs`); ``Linear`` + BN
    pairs need ``example_inputs`` for the 2-D output check (and a model
    torch.fx cannot trace symbolically is traced with them)."""
    gm = trace_model(model, leaf_modules=leaf_modules,
                     example_inputs=example_inputs)
    if example_inputs is not None and any(
            isinstance(m, nn.Linear) for m in gm.modules()):
        if isinstance(example_inputs, torch.Tensor):
            example_inputs = (example_inputs,)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                ShapeProp(gm).propagate(*example_inputs)
        finally:
            model.train(was_training)

    def ndim(node):
        meta = node.meta.get('tensor_meta')
        return None if meta is None else len(meta.shape)
    return conv_bn_pairs(gm, ndim)


def fold_bn(model: nn.Module,
            example_inputs: torch.Tensor | Sequence[torch.Tensor]
            | None = None,
            leaf_modules: Iterable[type | str] = (),
            inplace: bool = False) -> nn.Module:
    """Fold every BN that directly follows a conv / linear (eval semantics).

    Args:
        model: The model (BN running statistics must be final).
        example_inputs: Needed to fold ``Linear`` + BN pairs (shape check).
        leaf_modules: Extra leaf modules for the tracer.
        inplace: Modify ``model`` instead of a deep copy.

    Returns:
        The folded model; folded BNs are ``nn.Identity``.
    """
    new = model if inplace else copy.deepcopy(model)
    fuse_conv_bn(new, find_conv_bn_pairs(new, example_inputs, leaf_modules))
    return new
