"""Per-op channel rules: small registered functions, one per op family.

A module rule is ``fn(ctx, module, args, kwargs, sargs, skwargs, out)`` and
a function rule ``fn(ctx, args, kwargs, sargs, skwargs, out)``; ``args`` are
the real values of the traced call, ``sargs`` the slot tensors of its inputs
(see :mod:`.slots`) and the return value is the slot structure of ``out``.
Rules union slots that must be pruned together, fix slots that may not be
pruned and record prunable layers with ``ctx.add_member``.

This module holds the function / tensor-method rules; layer kinds
(:mod:`.layer_kinds`) and :mod:`.module_rules` hold the module rules.
Register a rule for a new op with :func:`register_module_rule` (classes,
looked up along the MRO) or :func:`register_function_rule` (functions or
tensor-method names such as ``'view'``).

Invariant every rule keeps: an op that mixes values across channel
positions either is a layer whose masked-mode input is zeroed (conv, linear,
layer norm, see :mod:`.masking`) or fixes those channels. Hence dropped
channels never leak into kept ones and export is exact.
"""
from __future__ import annotations

import functools
import inspect
import operator
import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .op_table import OpTable
from .size_provenance import tie_sizes
from .slots import (
    FIXED,
    NONE,
    channel_slots,
    compress,
    compress_all,
    expand_slots,
    fixed_like,
    flat_slots,
    full_like_shape,
    varying_dims,
)

#: module class -> rule (layer kinds register theirs from :mod:`.layer_kinds`)
MODULE_RULES = OpTable()
#: function object or tensor-method name -> rule
FUNCTION_RULES = OpTable()


def register_module_rule(*classes: type):
    """Decorator registering a channel rule for module classes."""
    return MODULE_RULES.register(*classes)


def register_function_rule(*targets: Any):
    """Decorator registering a channel rule for functions / method names."""
    return FUNCTION_RULES.register(*targets)


def lookup_module_rule(m: nn.Module):
    """The rule of ``m``'s nearest class (MRO order) or ``None``."""
    return MODULE_RULES.lookup_module(m)


def _tensors(sargs, args):
    """(slot, real) pairs of every tensor among positional args."""
    return [(s, a) for s, a in zip(sargs, args)
            if isinstance(a, torch.Tensor) and isinstance(s, torch.Tensor)]


# -- generic rule bodies ------------------------------------------------------
def elementwise(ctx, args, kwargs, sargs, skwargs, out):
    """Element-wise op on broadcast inputs: channels at one position are
    tied (residual add, SE gating mul ...)."""
    pairs = _tensors(list(sargs) + list(skwargs.values()),
                     list(args) + list(kwargs.values()))
    if not pairs or not isinstance(out, torch.Tensor):
        return fixed_like(out)
    res = None
    for s, _ in pairs:
        s = s if s.ndim == out.ndim else s.reshape(
            (1,) * (out.ndim - s.ndim) + tuple(s.shape))
        if res is None:
            res = s
            continue
        ctx.union.union_tensors(res, s)
        res, s = torch.broadcast_tensors(res, s)
        res = torch.where(res >= 0, res, s)
    return compress(res)


def unary(ctx, args, kwargs, sargs, skwargs, out):
    """Pass-through of the first tensor argument (activations, casts)."""
    s = sargs[0]
    if not isinstance(s, torch.Tensor) or not isinstance(out, torch.Tensor) \
            or s.ndim != out.ndim:
        return fixed_like(out)
    return s


def opaque(ctx, args, kwargs, sargs, skwargs, out):
    """An op that mixes channels in a way no rule describes: fix every
    input channel and treat the output as unprunable."""
    for s in flat_slots((sargs, skwargs)):
        ctx.union.fix(s)
    return fixed_like(out)


def creation(ctx, args, kwargs, sargs, skwargs, out):
    """Tensors created inside forward. A per-sample tensor (all dims but the
    first of size 1, e.g. stochastic-depth noise) is channel-agnostic;
    anything else has a literal shape that pruning could not change."""
    if not isinstance(out, torch.Tensor):
        return fixed_like(out)
    return full_like_shape(out.ndim, NONE if all(d == 1 for d in out.shape[1:])
                           else FIXED)


def index_apply(ctx, args, kwargs, sargs, skwargs, out):
    """Run the same shape op on the slot tensors (view, permute, cat ...)."""
    eargs = [expand_slots(s, a) for s, a in zip(sargs, args)]
    ekwargs = {k: expand_slots(skwargs.get(k), v) for k, v in kwargs.items()}
    return compress_all(_call(ctx, eargs[0], eargs[1:], ekwargs))


def _call(ctx, first, rest, kwargs):
    """The traced op (function or tensor method) on slot tensors."""
    t = ctx.node.target
    return getattr(first, t)(*rest, **kwargs) \
        if ctx.node.op == 'call_method' else t(first, *rest, **kwargs)


def _dim_arg(args, kwargs, pos, name='dim', default=None):
    return kwargs[name] if name in kwargs else \
        (args[pos] if len(args) > pos else default)


def _union_along(ctx, s, dim):
    """Union all entries of ``s`` along ``dim`` (keeps that dim's size when
    other dims shrink)."""
    first = s.narrow(dim, 0, 1)
    ctx.union.union_tensors(first.expand_as(s).contiguous(), s)


# -- function / method rules -------------------------------------------------
_ELEMENTWISE = [operator.add, operator.sub, operator.mul, operator.truediv,
                operator.iadd, operator.imul, operator.isub, torch.add, torch.sub,
                torch.mul, torch.div, torch.maximum, torch.minimum, torch.where,
                torch.masked_fill, 'add', 'sub', 'mul', 'div', 'add_', 'sub_', 'mul_',
                'div_', 'maximum', 'minimum', 'masked_fill', 'masked_fill_', 'where',
                '__add__', '__mul__', '__sub__', '__radd__', '__rmul__']
_UNARY = [F.relu, F.relu6, F.hardswish, F.hardsigmoid, F.silu, F.gelu, F.sigmoid,
          F.tanh, F.leaky_relu, F.elu, F.selu, F.mish, F.hardtanh, F.softplus,
          F.dropout, F.dropout2d, F.dropout1d, F.dropout3d, F.alpha_dropout, F.celu,
          torch.sigmoid, torch.tanh, torch.relu, torch.exp, torch.sqrt, torch.rsqrt,
          torch.abs, torch.neg, torch.clamp, torch.clip, torch.sign, torch.erf,
          torch.log, torch.pow, operator.neg, operator.pow, operator.abs,
          torch.square, torch.reciprocal, 'relu', 'relu_', 'sigmoid', 'sigmoid_',
          'tanh', 'tanh_', 'clamp', 'clamp_', 'clamp_min', 'clamp_max', 'clip', 'exp',
          'sqrt', 'rsqrt', 'abs', 'neg', 'pow', 'square', 'sign', 'erf', 'log',
          'reciprocal', 'contiguous', 'clone', 'float', 'half', 'double', 'bfloat16',
          'to', 'type_as', 'type', 'detach', 'requires_grad_', 'bernoulli_',
          'bernoulli', 'fill_', 'zero_', 'floor', 'floor_', 'ceil', 'round', 'sin',
          'cos', torch.sin, torch.cos, torch.floor, torch.detach, torch.clone,
          'hardswish', 'hardsigmoid', 'silu', 'gelu']
_SHAPE = ['squeeze', torch.squeeze, 'flatten', torch.flatten, 'movedim',
          torch.movedim, 'expand', 'expand_as', 'repeat', torch.cat, torch.concat,
          torch.concatenate, torch.stack, 'unbind', torch.unbind, 'repeat_interleave',
          torch.tile, 'tile']
# ops that only reorder / insert dims: applied to the compressed slots
_DIM_ORDER = ['permute', torch.permute, 'transpose', torch.transpose, 'unsqueeze',
              torch.unsqueeze, 'swapaxes', torch.swapaxes, 'swapdims', torch.swapdims,
              'T', 'mT']
_CREATION = [torch.zeros, torch.ones, torch.full, torch.empty, torch.arange,
             torch.linspace, torch.tensor, torch.zeros_like, torch.ones_like,
             torch.full_like, torch.empty_like, torch.rand, torch.randn,
             torch.rand_like, torch.randn_like, torch.randint, torch.eye,
             torch.as_tensor, torch.meshgrid, 'new_zeros', 'new_ones', 'new_full',
             'new_empty', 'new_tensor']
_OPAQUE = [F.linear, F.conv1d, F.conv2d, F.conv3d, F.conv_transpose2d, F.layer_norm,
           F.group_norm, F.instance_norm, F.normalize, F.local_response_norm,
           torch.einsum, F.scaled_dot_product_attention,
           F.multi_head_attention_forward, torch.baddbmm, torch.addmm, F.embedding,
           F.pixel_shuffle, F.pixel_unshuffle, F.unfold, F.fold, F.grid_sample,
           F.cosine_similarity, torch.cdist, torch.cumsum, 'cumsum', torch.sort,
           torch.topk, 'topk', 'sort', torch.gather, 'gather', torch.index_select,
           'index_select', 'scatter', 'scatter_add',
           torch.nn.functional.embedding_bag, torch.diag, 'diag']

register_function_rule(*_ELEMENTWISE)(elementwise)
register_function_rule(*_UNARY)(unary)
register_function_rule(*_SHAPE)(index_apply)


@register_function_rule(*_DIM_ORDER)
def dim_order_rule(ctx, args, kwargs, sargs, skwargs, out):
    """permute / transpose / unsqueeze: same op on the compressed slots."""
    s = sargs[0]
    if not isinstance(s, torch.Tensor):
        return fixed_like(out)
    return compress(_call(ctx, s, args[1:], kwargs))
register_function_rule(*_CREATION)(creation)
register_function_rule(*_OPAQUE)(opaque)


@register_function_rule(F.batch_norm)
def batch_norm_rule(ctx, args, kwargs, sargs, skwargs, out):
    """Functional batch norm (a norm module traced through, e.g. timm's
    ``BatchNormAct2d``): per channel on dim 1, so its statistics and affine
    tensors (free tensors, sliced by export) follow the input's channels."""
    x, s = args[0], sargs[0]
    if not isinstance(s, torch.Tensor) or x.ndim < 2:
        return opaque(ctx, args, kwargs, sargs, skwargs, out)
    c = x.shape[1]
    slots = channel_slots(ctx.union, s, 1, c)
    names = ('running_mean', 'running_var', 'weight', 'bias')
    for i, name in enumerate(names, start=1):
        t = kwargs.get(name, args[i] if len(args) > i else None)
        st = skwargs.get(name, sargs[i] if len(sargs) > i else None)
        if not isinstance(t, torch.Tensor):
            continue
        if not isinstance(st, torch.Tensor) or t.shape != (c,):
            return opaque(ctx, args, kwargs, sargs, skwargs, out)
        ctx.union.union_tensors(slots, st.reshape(-1))
    return slots.reshape([1, c] + [1] * (x.ndim - 2))


@register_function_rule('view', 'reshape', torch.reshape, 'unflatten',
                        torch.unflatten)
def reshape_rule(ctx, args, kwargs, sargs, skwargs, out):
    """view / reshape: sizes computed at run time (``x.size(1)``, ``-1``)
    follow pruning, literal ints do not; a slot-carrying dim of literal size
    must keep its size (its slots are tied across it) or, if no other
    slot-carrying dim can shrink, is fixed."""
    res = index_apply(ctx, args, kwargs, sargs, skwargs, out)
    if not isinstance(res, torch.Tensor):
        return res
    node = ctx.node
    target = node.target
    if target in ('unflatten', torch.unflatten):
        dim = _dim_arg(args, kwargs, 1) % args[0].ndim
        sizes = node.args[2] if len(node.args) > 2 else node.kwargs['sizes']
        literal = {dim + i: not isinstance(v, torch.fx.Node) and v != -1
                   for i, v in enumerate(sizes)}
    else:
        sizes = node.args[1:] if len(node.args) > 1 else \
            (node.kwargs.get('shape') or node.kwargs.get('size'),)
        if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
            sizes = sizes[0]
        if isinstance(sizes, torch.fx.Node):  # whole shape from x.size()
            return res
        literal = {i: not isinstance(v, torch.fx.Node) and v != -1
                   for i, v in enumerate(sizes)}
    computed = tie_sizes(ctx, res, sizes if target not in (
        'unflatten', torch.unflatten) else None, sargs[0])
    res = compress(ctx.union.canon(res))
    var = varying_dims(res)
    const = [d for d in var if literal.get(d, False) or d in computed]
    if not const:
        return res
    if len(const) == len(var):
        ctx.union.fix(res)
        return compress(ctx.union.canon(res))
    for d in const:
        _union_along(ctx, res, d)
    return compress(ctx.union.canon(res))


def _slice_lead(it, node_it, n: int) -> int | None:
    """Leading positions of a dim of size ``n`` that must stay in place for
    index ``it`` (``node_it`` in the FX graph) to pick the same channels
    after pruning; ``None``: no prefix suffices (int, step, run-time ...)."""
    if not isinstance(it, slice) or not isinstance(node_it, slice) or any(
            isinstance(v, torch.fx.Node) for v in (
                node_it.start, node_it.stop, node_it.step)) or \
            it.step not in (None, 1) or (it.start or 0) < 0 or \
            (it.stop is not None and it.stop < 0):
        return None
    # a stop past the end stays past it after pruning: only the channels
    # before ``start`` must keep their positions (a stop inside: fixed)
    return min(it.start or 0, n) if it.stop is None or it.stop >= n else None


@register_function_rule(operator.getitem)
def getitem_rule(ctx, args, kwargs, sargs, skwargs, out):
    """Indexing: containers pick the element; tensors are indexed like the
    real one. A literal slice ``[a:b]`` of a channel dim with ``b`` past its
    end (``x[:, a:]``; GhostNet's ``out[:, :out_chs]`` over the whole dim)
    fixes only the channels before ``a``; any other index into a channel dim
    fixes it."""
    s, idx = sargs[0], args[1]
    if not isinstance(args[0], torch.Tensor):
        return s[idx] if isinstance(s, (tuple, list)) else fixed_like(out)
    if not isinstance(out, torch.Tensor):
        return None
    s = compress(ctx.union.canon(s))
    items = idx if isinstance(idx, tuple) else (idx,)
    nidx = ctx.node.args[1] if len(ctx.node.args) > 1 else None
    nitems = nidx if isinstance(nidx, tuple) else (nidx,)
    nitems = nitems if len(nitems) == len(items) else (None,) * len(items)
    dim = 0
    for it, nit in zip(items, nitems):
        if it is Ellipsis:
            dim = args[0].ndim - (len(items) - 1 - items.index(Ellipsis)) \
                - sum(1 for x in items[items.index(Ellipsis) + 1:] if x is None)
            continue
        if it is None:
            continue
        if dim < s.ndim and s.shape[dim] > 1 and not (
                isinstance(it, slice) and it == slice(None)):
            lead = _slice_lead(it, nit, s.shape[dim])
            ctx.union.fix(s if lead is None else s.narrow(dim, 0, lead))
        dim += 1
    s = compress(ctx.union.canon(s))
    return index_apply(ctx, args, kwargs, (s,) + tuple(sargs[1:]), skwargs,
                       out)


@dataclass
class SizeSite:
    """Literal split sizes read from attributes of the splitting module
    ``owner`` (MixNet's ``MixedConv2d.splits``; FasterNet's ``dim_conv3``,
    ``dim_untouched``): one list attribute (``is_list``) or one int per
    piece. Export sets them to the kept channels of each piece; ``slots``
    are the split input's channels, ``index`` their units (ChannelGraph)."""

    owner: str
    attrs: tuple[str, ...]
    is_list: bool
    sizes: tuple[int, ...]
    slots: torch.Tensor
    index: torch.Tensor | None = None

    def apply(self, model: nn.Module, gmask: torch.Tensor) -> None:
        """Set the attributes of ``model``'s owner to the kept counts."""
        keep = gmask[self.index].reshape(-1)
        counts = [int(k.sum()) for k in keep.split(list(self.sizes))]
        m = model.get_submodule(self.owner)
        if self.is_list:
            counts = [type(getattr(m, self.attrs[0]))(counts)]
        for a, c in zip(self.attrs, counts):
            setattr(m, a, c)


@functools.lru_cache(maxsize=512)
def _source(fn) -> str:
    try:
        return inspect.getsource(fn)
    except (OSError, TypeError):
        return ''


def _bind_sizes(ctx, sizes) -> tuple | None:
    """``(owner, attrs, is_list)``: among the attributes the splitting
    module's forward reads (``self.<name>`` in its source), the one list
    equal to ``sizes`` or one distinct int per piece; else ``None``."""
    root = getattr(ctx.cg, 'root', None)
    if root is None:
        return None
    # its name in the root ('' for the root's forward; keys get '@n' suffixes)
    stack = ctx.node.meta.get('nn_module_stack') or {}
    owner = next(reversed(stack.values()))[0] if stack else ''
    m = root.get_submodule(owner)
    src = _source(getattr(m.forward, '__func__', m.forward))
    attrs = {k: v for k, v in vars(m).items() if not k.startswith('_') and
             not isinstance(v, bool) and re.search(rf'\bself\.{k}\b', src)}
    lists = [k for k, v in attrs.items() if isinstance(v, (list, tuple))
             and all(type(i) is int for i in v) and list(v) == list(sizes)]
    ints = [[k for k, v in attrs.items() if type(v) is int and v == n]
            for n in sizes]
    if lists:
        return (owner, (lists[0],), True) if len(lists) == 1 else None
    one = [c[0] for c in ints if len(c) == 1]
    return (owner, tuple(one), False) if len(set(one)) == len(ints) else None


def _literal_split(ctx, args, s, dim: int) -> bool:
    """Literal split sizes that export can rewrite (:class:`SizeSite`): each
    piece prunes its own range, one channel fixed so none becomes empty."""
    nsizes = ctx.node.args[1] if len(ctx.node.args) > 1 else None
    sites = getattr(ctx.cg, 'size_sites', None)
    slots = s.reshape(-1)
    if sites is None or ctx.node.target not in ('split', torch.split) or \
            not isinstance(nsizes, (list, tuple)) or not all(
                type(v) is int and v > 0 for v in nsizes) or \
            varying_dims(s) != [dim] or bool((slots < 0).any()):
        return False
    sizes = list(args[1])
    bound = _bind_sizes(ctx, sizes)
    if bound is None:
        return False
    ctx.union.fix(torch.stack([piece[0] for piece in slots.split(sizes)]))
    if bound[:2] in sites:  # the module called again: one set of sizes
        ctx.union.union_tensors(sites[bound[:2]].slots, slots)
    else:
        sites[bound[:2]] = SizeSite(*bound, tuple(sizes), slots.clone())
    return True


@register_function_rule('chunk', torch.chunk, 'split', torch.split,
                        torch.tensor_split, 'tensor_split')
def split_rule(ctx, args, kwargs, sargs, skwargs, out):
    """chunk / split along a channel dim: run-time equal pieces stay equal
    only if every piece keeps the same positions (slots tied across pieces);
    literal sizes are fixed unless :func:`_literal_split` can bind them."""
    x = args[0]
    s = compress(ctx.union.canon(sargs[0]))
    target = ctx.node.target
    dim = _dim_arg(args, kwargs, 2, default=0) % x.ndim
    if dim < s.ndim and s.shape[dim] > 1:
        arg1 = ctx.node.args[1] if len(ctx.node.args) > 1 else None
        c, equal = x.shape[dim], False
        if target in ('chunk', torch.chunk):
            n = args[1] if len(args) > 1 else kwargs['chunks']
            equal = c % n == 0
        elif isinstance(arg1, torch.fx.Node) and isinstance(args[1], int):
            n = c // args[1] if args[1] and c % args[1] == 0 else 0
            equal = n > 0
        if equal:
            _union_along(ctx, s.unflatten(dim, (n, c // n)), dim)
        elif not _literal_split(ctx, args, s, dim):
            ctx.union.fix(s)
        s = compress(ctx.union.canon(s))
    return index_apply(ctx, args, kwargs, (s,) + tuple(sargs[1:]), skwargs,
                       out)


@register_function_rule('narrow', torch.narrow, 'select', torch.select,
                        torch.roll, 'roll', F.pad)
def positional_rule(ctx, args, kwargs, sargs, skwargs, out):
    """Ops addressing literal positions: harmless on dims without channel
    slots (spatial roll / pad of Swin), fixing when applied to a channel
    dim."""
    x = args[0]
    s = compress(ctx.union.canon(sargs[0]))
    target = ctx.node.target
    if target is F.pad:
        pad = args[1] if len(args) > 1 else kwargs['pad']
        dims = [x.ndim - 1 - i // 2 for i in range(len(pad)) if pad[i]]
    elif target in (torch.roll, 'roll'):
        d = _dim_arg(args, kwargs, 2, 'dims')
        dims = list(d) if isinstance(d, (tuple, list)) else \
            ([d] if d is not None else list(range(x.ndim)))
    else:
        dims = [_dim_arg(args, kwargs, 1)]
    dims = [d % x.ndim for d in dims]
    if any(s.shape[d] > 1 for d in dims):
        ctx.union.fix(s)
        return fixed_like(out)
    if target is F.pad or target in (torch.roll, 'roll'):
        return s  # constant along the touched dims: broadcast still valid
    return index_apply(ctx, args, kwargs, (s,) + tuple(sargs[1:]), skwargs,
                       out)


_REDUCE = [torch.mean, torch.sum, torch.amax, torch.amin, torch.std, torch.var,
           torch.logsumexp, torch.max, torch.min, torch.prod, torch.norm, 'mean',
           'sum', 'amax', 'amin', 'std', 'var', 'logsumexp', 'max', 'min', 'prod',
           'norm', torch.argmax, 'argmax']


@register_function_rule(*_REDUCE)
def reduce_rule(ctx, args, kwargs, sargs, skwargs, out):
    """Reductions: fine over dims without channel slots (global pooling via
    ``mean([2, 3])``); reducing over channels mixes them (fixed)."""
    x = args[0]
    if len(args) > 1 and isinstance(args[1], torch.Tensor):
        return elementwise(ctx, args, kwargs, sargs, skwargs, out)  # max(a, b)
    s = compress(ctx.union.canon(sargs[0]))
    dim = _dim_arg(args, kwargs, 1)
    if ctx.node.target in (torch.norm, 'norm'):
        dim = _dim_arg(args, kwargs, 2)
    keep = bool(kwargs.get('keepdim', args[2] if len(args) > 2 and
                           isinstance(args[2], bool) else False))
    dims = list(range(x.ndim)) if dim is None else (
        [dim] if isinstance(dim, int) else list(dim))
    dims = sorted(d % x.ndim for d in dims)
    res = s
    if any(s.shape[d] > 1 for d in dims):
        ctx.union.fix(s)
        res = full_like_shape(x.ndim, FIXED)
    if not keep:
        for d in reversed(dims):
            res = res.squeeze(d) if res.ndim > d else res
    if isinstance(out, tuple):  # values, indices
        return tuple(res for _ in out)
    if isinstance(out, torch.Tensor) and res.ndim != out.ndim:
        return full_like_shape(out.ndim, FIXED if bool((s >= 0).any())
                               else NONE)
    return res


_SPATIAL = [F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
            F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
            F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.max_pool1d, F.max_pool2d,
            F.max_pool3d, F.interpolate, F.upsample, F.upsample_nearest,
            F.upsample_bilinear, F.lp_pool2d]


@register_function_rule(*_SPATIAL)
def spatial_rule(ctx, args, kwargs, sargs, skwargs, out):
    """Pooling / resizing over dims >= 2: per channel, pass-through."""
    s = compress(ctx.union.canon(sargs[0]))
    if any(d >= 2 for d in varying_dims(s)):
        ctx.union.fix(s)
        return fixed_like(out)
    if isinstance(out, tuple):
        return tuple(s for _ in out)
    return s


@register_function_rule(F.softmax, F.log_softmax, torch.softmax,
                        torch.log_softmax, 'softmax', 'log_softmax')
def softmax_rule(ctx, args, kwargs, sargs, skwargs, out):
    """Softmax normalises along ``dim``: fixed if that dim carries slots."""
    s = compress(ctx.union.canon(sargs[0]))
    dim = _dim_arg(args, kwargs, 1)
    dim = -1 if dim is None else dim % args[0].ndim
    if s.shape[dim] > 1:
        ctx.union.fix(s)
    return s


@register_function_rule(torch.matmul, operator.matmul, torch.bmm,
                        'matmul', 'bmm', '__matmul__')
def matmul_rule(ctx, args, kwargs, sargs, skwargs, out):
    """a @ b: the contracted dim mixes channels (fixed); rows of ``a`` and
    columns of ``b`` pass through when only one of them carries slots."""
    a, b = args[0], args[1]
    if a.ndim < 2 or b.ndim < 2:
        return opaque(ctx, args, kwargs, sargs, skwargs, out)
    sa = compress(ctx.union.canon(sargs[0]))
    sb = compress(ctx.union.canon(sargs[1]))
    if sa.shape[-1] > 1:
        ctx.union.fix(sa)
    if sb.shape[-2] > 1:
        ctx.union.fix(sb)
    sa = compress(ctx.union.canon(sa)).narrow(-1, 0, 1)
    sb = compress(ctx.union.canon(sb)).narrow(-2, 0, 1)
    rows_vary = sa.shape[-2] > 1 and bool((sa >= 0).any())
    cols_vary = sb.shape[-1] > 1 and bool((sb >= 0).any())
    if rows_vary and cols_vary:
        return opaque(ctx, (a, b), {}, (sa, sb), {}, out)
    try:
        return elementwise(ctx, (a, b), {}, (sa, sb), {}, out)
    except RuntimeError:  # batch dims that do not broadcast
        return opaque(ctx, args, kwargs, sargs, skwargs, out)
