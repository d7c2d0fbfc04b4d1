"""Physical export: slice weights of a deep copy, then verify equivalence.

How each layer is sliced is its layer kind's ``export`` (:mod:`.layer_kinds`);
free tensors (layer scale, positional embeddings) are sliced here.
"""
from __future__ import annotations

import copy
import types
from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import nn

from .channel_graph import ChannelGraph, run_tensor_forward
from .layer_kinds import get_layer_kind, register_layer_kind, slice_attr
from .masking import remove_masks

__all__ = ['ExportError', 'export_pruned', 'check_equivalence',
           'register_exporter', 'fuse_conv_bn', 'keep_one_per_producer']


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
    own = keep.shape
    keep = keep.expand(getattr(m, attr).shape)
    dims = [d for d in range(keep.ndim) if keep.shape[d] > 1 and not bool(
        (keep == keep.narrow(d, 0, 1)).all())]
    if not dims:
        # every channel dropped (a subnet keeping no unit of a space): the
        # keep mask is constant, so the channel dim is the one dim the
        # tensor's own index did not broadcast; a layer left without
        # channels then fails the equivalence run with a named ExportError
        dims = [d for d in range(len(own)) if own[d] > 1]
        dims = [d + keep.ndim - len(own) for d in dims]
    if len(dims) != 1:
        raise ExportError(f'cannot slice tensor {name!r}: its kept channels '
                          f'vary along dims {dims} (index shape '
                          f'{tuple(own)}, tensor shape {tuple(keep.shape)})')
    d = dims[0]
    line = keep
    for other in range(keep.ndim):
        if other != d:
            line = line.narrow(other, 0, 1)
    idx = line.reshape(-1).nonzero().reshape(-1)
    slice_attr(m, attr, d, idx)


def keep_one_per_producer(graph: ChannelGraph, gmask: torch.Tensor
                          ) -> torch.Tensor:
    """Re-enable the first unit of every producer left with none.

    A space spanning a concat (CSP / ESE / dense / inception blocks: the
    concat's channels are tied to a residual or a gate) may drop every unit
    of one concat input, and a conv / linear with zero output channels
    cannot run. Masking and export both read the mask returned here, so the
    masked and the exported model stay equal (one unit more is kept).

    Args:
        graph: The channel graph (its producer index is cached on it).
        gmask: Global unit mask (:meth:`ChannelGraph.global_mask`).

    Returns:
        ``gmask`` itself when no producer is empty, else a repaired copy.
    """
    seg = graph.__dict__.get('_producer_units')
    if seg is None:  # (unit, producer number) pairs and first unit of each
        recs = _partial_producers(graph)
        empty = torch.zeros(0, dtype=torch.long)
        seg = (torch.cat(recs), torch.cat([
            torch.full((len(r),), i, dtype=torch.long)
            for i, r in enumerate(recs)]),
            torch.stack([r[0] for r in recs])) if recs else \
            (empty, empty, empty)
        graph.__dict__['_producer_units'] = seg
    units, owner, first = seg
    if not len(first):
        return gmask
    kept = torch.zeros(len(first), dtype=torch.long).index_add_(
        0, owner, gmask[units].long())
    empty = kept == 0
    if bool(empty.any()):
        gmask = gmask.clone()
        gmask[first[empty]] = True
    return gmask


def _partial_producers(graph: ChannelGraph) -> list[torch.Tensor]:
    """Unit indices of the producers covering only part of their space
    and no fixed channel: the only ones a sampler (at least one unit per
    space) can leave empty. Most models have none, so the mask repair
    costs nothing there."""
    sizes = [sp.num_channels for sp in graph.spaces.values()]
    if not sizes:
        return []
    unit_space = torch.repeat_interleave(torch.arange(len(sizes)),
                                         torch.tensor(sizes))
    width = torch.tensor(sizes)
    res = []
    for r in graph.layers.values():
        if not r.producer or r.out_index is None or not r.out_index.numel():
            continue
        units = torch.unique(r.out_index.reshape(-1))
        if int(units[-1]) >= len(unit_space):  # a fixed channel stays
            continue
        if len(units) < int(width[unit_space[units[0]]]):
            res.append(units)
    return res


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
            elif isinstance(v, types.MethodType) and v.__self__ is m:
                # a forward chosen in __init__ (timm's Partial_conv3:
                # ``self.forward = self.forward_split_cat``) must run on
                # the copy, not on the unsliced original
                v = types.MethodType(v.__func__, new)
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
    for site in graph.size_sites.values():  # literal split sizes
        site.apply(new, gmask)
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


def _outputs(reference, candidate, inputs):
    """Flat eval-mode outputs of both models (train flags restored)."""
    modes = (reference.training, candidate.training)
    reference.eval()
    candidate.eval()
    try:
        with torch.no_grad():
            ref = _flat(run_tensor_forward(reference, inputs))
            try:
                out = _flat(run_tensor_forward(candidate, inputs))
            except RuntimeError as e:  # e.g. a channel count left unsliced
                raise ExportError('the exported model fails to run where '
                                  f'the reference runs: {e}') from e
    finally:
        reference.train(modes[0])
        candidate.train(modes[1])
    return ref, out


def _diff(ref, out) -> tuple[float, float]:
    """(max abs diff, that over the reference's max magnitude)."""
    if len(ref) != len(out) or any(a.shape != b.shape
                                   for a, b in zip(ref, out)):
        return float('inf'), float('inf')
    diff = max(float((a.double() - b.double()).abs().max()) for a, b in
               zip(ref, out)) if ref else 0.0
    scale = max(float(a.double().abs().max()) for a in ref) if ref else 1.0
    return diff, diff / max(scale, 1e-12)


def check_equivalence(reference: nn.Module, candidate: nn.Module,
                      inputs: Sequence[torch.Tensor], rtol: float = 1e-5,
                      recheck_float64: bool = True) -> dict:
    """Compare two models' eval-mode outputs on the same inputs.

    A float32 comparison that fails is repeated on float64 copies: a
    wrong slice differs in any precision, while float32 rounding amplified
    by an ill-conditioned network (softmax attention over large logits on
    random weights: visformer's masked model alone is 1.5e-5 away from its
    own float64 result) vanishes there. The float64 verdict then decides.

    Args:
        reference: The masked (or original) model.
        candidate: The exported (or fused) model.
        inputs: Positional inputs of both.
        rtol: Allowed max abs difference relative to the output scale.
        recheck_float64: Repeat a failed float32 check in float64.

    Returns:
        ``{'max_abs_diff', 'rel_diff', 'ok', 'vacuous'}`` where ``rel_diff``
        is the max absolute difference divided by the reference's max
        magnitude (both of the first, as-given precision) and ``vacuous``
        says the reference output is all zeros (nothing was really
        compared); with a float64 recheck also ``'float64_rel_diff'``.
    """
    ref, out = _outputs(reference, candidate, inputs)
    diff, rel = _diff(ref, out)
    # an all-zero reference (a zero-initialised head) matches any candidate
    # whose head is zero too, however wrong its slices
    vacuous = bool(ref) and not any(bool(a.ne(0).any()) for a in ref)
    report = {'max_abs_diff': diff, 'rel_diff': rel, 'ok': rel <= rtol,
              'vacuous': vacuous}
    if report['ok'] or not recheck_float64 or rel == float('inf') or \
            not any(t.dtype == torch.float32 for t in ref):
        return report
    ref64, out64 = _outputs(
        clone_module(reference).double(), clone_module(candidate).double(),
        [x.double() if isinstance(x, torch.Tensor) and x.is_floating_point()
         else x for x in inputs])
    rel64 = _diff(ref64, out64)[1]
    report.update(float64_rel_diff=rel64, ok=rel64 <= rtol)
    return report
