"""Physical export: slice weights of a deep copy, then verify equivalence.

How each layer is sliced is its layer kind's ``export`` (:mod:`.layer_kinds`);
free tensors (layer scale, positional embeddings) are sliced here.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import nn

from .channel_graph import ChannelGraph, run_tensor_forward
from .layer_kinds import get_layer_kind, register_layer_kind, slice_attr
from .masking import remove_masks

__all__ = ['ExportError', 'export_pruned', 'check_equivalence',
           'register_exporter', 'fuse_conv_bn']


class ExportError(RuntimeError):
    """The exported model does not reproduce the masked model."""


def register_exporter(kind: str):
    """Replace the slicer ``fn(module, in_idx, out_idx)`` of a registered
    layer kind (a new kind is described whole by
    :func:`~.layer_kinds.register_layer_kind`)."""
    def deco(fn):
        register_layer_kind(replace(get_layer_kind(kind), export=fn))
        return fn
    return deco


def _export_param(model: nn.Module, name: str, keep: torch.Tensor):
    """Slice a free tensor (layer scale, positional embedding ...)."""
    if bool(keep.all()):
        return
    owner, _, attr = name.rpartition('.')
    m = model.get_submodule(owner) if owner else model
    keep = keep.expand(getattr(m, attr).shape)
    dims = [d for d in range(keep.ndim) if keep.shape[d] > 1 and not bool(
        (keep == keep.narrow(d, 0, 1)).all())]
    if len(dims) != 1:
        raise ExportError(f'cannot slice tensor {name!r}: its kept channels '
                          f'vary along dims {dims}')
    d = dims[0]
    line = keep
    for other in range(keep.ndim):
        if other != d:
            line = line.narrow(other, 0, 1)
    idx = line.reshape(-1).nonzero().reshape(-1)
    slice_attr(m, attr, d, idx)


def clone_module(model: nn.Module, clone_tensors: bool = True
                 ) -> nn.Module:
    """Deep copy of a module tree, several times faster than ``deepcopy``.

    Every module is shallow-copied (its own ``__dict__``), containers in it
    (parameter / buffer / child / hook dicts, lists, sets) are copied one
    level, tensors are cloned (shared tensors stay shared); other attribute
    values (ints, strings, configs) are shared with the original, which is
    safe because export only reassigns them. Falls back to
    ``copy.deepcopy`` for modules that define ``__deepcopy__``.

    Args:
        model: Module to copy.
        clone_tensors: If False, parameters / buffers are shared with the
            original (the caller replaces or clones them, see
            :func:`export_pruned`).
    """
    memo: dict[int, object] = {}

    def tensor(t):
        if t is None or not clone_tensors:
            return t
        if id(t) not in memo:
            if isinstance(t, nn.Parameter):
                memo[id(t)] = nn.Parameter(t.detach().clone(),
                                           requires_grad=t.requires_grad)
            else:
                memo[id(t)] = t.detach().clone()
        return memo[id(t)]

    def module(m):
        if id(m) in memo:
            return memo[id(m)]
        if '__deepcopy__' in type(m).__dict__:
            new = copy.deepcopy(m)
            memo[id(m)] = new
            return new
        cls = type(m)
        new = cls.__new__(cls)
        d = {}
        for k, v in m.__dict__.items():
            if isinstance(v, dict):
                v = v.copy()
            elif isinstance(v, (list, set)):
                v = type(v)(v)
            d[k] = v
        object.__setattr__(new, '__dict__', d)
        memo[id(m)] = new
        new._parameters = {k: tensor(v) for k, v in m._parameters.items()}
        new._buffers = {k: tensor(v) for k, v in m._buffers.items()}
        new._modules = {k: None if c is None else module(c)
                        for k, c in m._modules.items()}
        return new

    return module(model)


def export_pruned(model: nn.Module, graph: ChannelGraph,
                  gmask: torch.Tensor) -> nn.Module:
    """A physically sliced deep copy of ``model`` for the unit mask."""
    # tensors are shared first: most get replaced by their slices, the
    # untouched ones are cloned at the end
    new = clone_module(model, clone_tensors=False)
    remove_masks(new)
    for name, rec in graph.layers.items():
        if rec.kind == 'param':
            _export_param(new, name, gmask[rec.out_index])
            continue
        keep_in = graph.layer_keep(rec, gmask, 'in')
        keep_out = graph.layer_keep(rec, gmask, 'out')

        def idx(k):
            return None if k is None or bool(k.all()) else \
                k.nonzero().reshape(-1)
        in_idx, out_idx = idx(keep_in), idx(keep_out)
        if in_idx is None and out_idx is None:
            continue
        get_layer_kind(rec.kind).export(new.get_submodule(name), in_idx,
                                        out_idx)
    _unshare(new, model)
    return new


def _unshare(new: nn.Module, original: nn.Module) -> None:
    """Clone every tensor of ``new`` that is still one of ``original``'s."""
    old = {id(t) for t in original.parameters()}
    old.update(id(t) for t in original.buffers())
    memo: dict[int, torch.Tensor] = {}
    for m in new.modules():
        for store in (m._parameters, m._buffers):
            for k, t in store.items():
                if t is None or id(t) not in old:
                    continue
                if id(t) not in memo:  # tied tensors stay tied
                    memo[id(t)] = nn.Parameter(
                        t.detach().clone(), requires_grad=t.requires_grad
                    ) if isinstance(t, nn.Parameter) else t.detach().clone()
                store[k] = memo[id(t)]


def fuse_conv_bn(model: nn.Module, pairs: Sequence[tuple[str, str]]) -> int:
    """Fold BatchNorm into the preceding conv / linear (eval) in place.

    Grouped and depthwise convs fold like dense ones (the BN scale is per
    output channel); ``Linear`` + ``BatchNorm1d`` pairs are folded too.

    Returns:
        Number of pairs fused.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval
    n = 0
    for conv_name, bn_name in pairs:
        conv = model.get_submodule(conv_name)
        bn = model.get_submodule(bn_name)
        fuse = fuse_linear_bn_eval if isinstance(conv, nn.Linear) else \
            fuse_conv_bn_eval  # per-output-channel scale: any groups
        fused = fuse(conv.eval(), bn.eval())
        fused.train(model.training)
        for name, mod in ((conv_name, fused), (bn_name, nn.Identity())):
            owner, _, attr = name.rpartition('.')
            setattr(model.get_submodule(owner) if owner else model, attr, mod)
        n += 1
    return n


def _flat(x):
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (tuple, list)):
        return [t for y in x for t in _flat(y)]
    if isinstance(x, dict):
        return [t for y in x.values() for t in _flat(y)]
    return []


def check_equivalence(reference: nn.Module, candidate: nn.Module,
                      inputs: Sequence[torch.Tensor], rtol: float = 1e-5
                      ) -> dict:
    """Compare two models' eval-mode outputs on the same inputs.

    Returns:
        ``{'max_abs_diff', 'rel_diff', 'ok'}`` where ``rel_diff`` is the max
        absolute difference divided by the reference's max magnitude.
    """
    modes = (reference.training, candidate.training)
    reference.eval()
    candidate.eval()
    try:
        with torch.no_grad():
            ref = _flat(run_tensor_forward(reference, inputs))
            out = _flat(run_tensor_forward(candidate, inputs))
    finally:
        reference.train(modes[0])
        candidate.train(modes[1])
    if len(ref) != len(out) or any(a.shape != b.shape
                                   for a, b in zip(ref, out)):
        return {'max_abs_diff': float('inf'), 'rel_diff': float('inf'),
                'ok': False}
    diff = max(float((a.float() - b.float()).abs().max()) for a, b in
               zip(ref, out)) if ref else 0.0
    scale = max(float(a.float().abs().max()) for a in ref) if ref else 1.0
    rel = diff / max(scale, 1e-12)
    return {'max_abs_diff': diff, 'rel_diff': rel, 'ok': rel <= rtol}
