"""Per-op channel rules: small registered functions, one per op family.

A module rule is ``fn(ctx, module, args, kwargs, sargs, skwargs, out)`` and
a function rule ``fn(ctx, args, kwargs, sargs, skwargs, out)``; ``args`` are
the real values of the traced call, ``sargs`` the slot tensors of its inputs
(see :mod:`.slots`) and the return value is the slot structure of ``out``.
Rules union slots that must be pruned together, fix slots that may not be
pruned and record prunable layers with ``ctx.add_member``.

Register a rule for a new op with :func:`register_module_rule` (module
classes, looked up along the MRO) or :func:`register_function_rule`
(function objects or tensor-method names such as ``'view'``).

Invariant every rule keeps: an op that mixes values across channel
positions either is a layer whose masked-mode input is zeroed (conv, linear,
layer norm, see :mod:`.masking`) or fixes those channels. Hence dropped
channels never leak into kept ones and export is exact.
"""
from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .slots import FIXED, NONE, channel_slots, compress, full_like_shape, varying_dims

MODULE_RULES: dict[type, Callable] = {}
FUNCTION_RULES: dict[Any, Callable] = {}


def register_module_rule(*classes: type):
    """Decorator registering a channel rule for module classes."""
    def deco(fn):
        for cls in classes:
            MODULE_RULES[cls] = fn
        return fn
    return deco


def register_function_rule(*targets: Any):
    """Decorator registering a channel rule for functions / method names."""
    def deco(fn):
        for t in targets:
            FUNCTION_RULES[t] = fn
        return fn
    return deco


def lookup_module_rule(m: nn.Module):
    for cls in type(m).__mro__:
        if cls in MODULE_RULES:
            return MODULE_RULES[cls]
    return None


def _tensors(sargs, args):
    """(slot, real) pairs of every tensor among positional args."""
    return [(s, a) for s, a in zip(sargs, args)
            if isinstance(a, torch.Tensor) and isinstance(s, torch.Tensor)]


def _fixed_like(out):
    if isinstance(out, torch.Tensor):
        return full_like_shape(out.ndim, FIXED)
    if isinstance(out, (tuple, list)):
        return type(out)(_fixed_like(o) for o in out) \
            if not hasattr(out, '_fields') else tuple(_fixed_like(o) for o in out)
    return None


def _flat_slots(x):
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, (tuple, list)):
        for y in x:
            yield from _flat_slots(y)
    elif isinstance(x, dict):
        for y in x.values():
            yield from _flat_slots(y)


# --------------------------------------------------------------------------
# generic rule bodies
# --------------------------------------------------------------------------
def elementwise(ctx, args, kwargs, sargs, skwargs, out):
    """Element-wise op on broadcast inputs: channels at one position are
    tied (residual add, SE gating mul ...)."""
    pairs = _tensors(list(sargs) + list(skwargs.values()),
                     list(args) + list(kwargs.values()))
    if not pairs or not isinstance(out, torch.Tensor):
        return _fixed_like(out)
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
    if not isinstance(s, torch.Tensor) or not isinstance(out, torch.Tensor):
        return _fixed_like(out)
    if s.ndim != out.ndim:
        return _fixed_like(out)
    return s


def opaque(ctx, args, kwargs, sargs, skwargs, out):
    """An op that mixes channels in a way no rule describes: fix every
    input channel and treat the output as unprunable."""
    for s in _flat_slots((sargs, skwargs)):
        ctx.union.fix(s)
    return _fixed_like(out)


def creation(ctx, args, kwargs, sargs, skwargs, out):
    """Tensors created inside forward. A per-sample tensor (all dims but the
    first of size 1, e.g. stochastic-depth noise) is channel-agnostic;
    anything else has a literal shape that pruning could not change."""
    if isinstance(out, torch.Tensor):
        if out.ndim == 0 or all(d == 1 for d in out.shape[1:]):
            return full_like_shape(out.ndim, NONE)
        return full_like_shape(out.ndim, FIXED)
    return _fixed_like(out)


def _expand(s, real):
    if isinstance(real, torch.Tensor):
        if not isinstance(s, torch.Tensor):
            s = full_like_shape(real.ndim, FIXED)
        if s.ndim != real.ndim:
            s = s.reshape((1,) * (real.ndim - s.ndim) + tuple(s.shape))
        return s.expand(real.shape).contiguous()
    if isinstance(real, (tuple, list)) and isinstance(s, (tuple, list)):
        return type(real)(_expand(a, b) for a, b in zip(s, real))
    return real


def _compress_all(x):
    if isinstance(x, torch.Tensor):
        return compress(x)
    if isinstance(x, (tuple, list)):
        return tuple(_compress_all(y) for y in x)
    return None


def index_apply(ctx, args, kwargs, sargs, skwargs, out):
    """Run the same shape op on the slot tensors (view, permute, cat ...)."""
    eargs = [_expand(s, a) for s, a in zip(sargs, args)]
    ekwargs = {k: _expand(skwargs.get(k), v) for k, v in kwargs.items()}
    target = ctx.node.target
    if ctx.node.op == 'call_method':
        res = getattr(eargs[0], target)(*eargs[1:], **ekwargs)
    else:
        res = target(*eargs, **ekwargs)
    return _compress_all(res)


def _dim_arg(args, kwargs, pos, name='dim', default=None):
    if name in kwargs:
        return kwargs[name]
    return args[pos] if len(args) > pos else default


def _union_along(ctx, s, dim):
    """Union all entries of ``s`` along ``dim`` (keeps that dim's size when
    other dims shrink)."""
    first = s.narrow(dim, 0, 1)
    ctx.union.union_tensors(first.expand_as(s).contiguous(), s)


# --------------------------------------------------------------------------
# function / method rules
# --------------------------------------------------------------------------
_ELEMENTWISE = [operator.add, operator.sub, operator.mul, operator.truediv,
                operator.iadd, operator.imul, operator.isub,
                torch.add, torch.sub, torch.mul, torch.div, torch.maximum,
                torch.minimum, torch.where, torch.masked_fill,
                'add', 'sub', 'mul', 'div', 'add_', 'sub_', 'mul_', 'div_',
                'maximum', 'minimum', 'masked_fill', 'masked_fill_', 'where',
                '__add__', '__mul__', '__sub__', '__radd__', '__rmul__']
_UNARY = [F.relu, F.relu6, F.hardswish, F.hardsigmoid, F.silu, F.gelu,
          F.sigmoid, F.tanh, F.leaky_relu, F.elu, F.selu, F.mish,
          F.hardtanh, F.softplus, F.dropout, F.dropout2d, F.dropout1d,
          F.dropout3d, F.alpha_dropout, F.celu,
          torch.sigmoid, torch.tanh, torch.relu, torch.exp, torch.sqrt,
          torch.rsqrt, torch.abs, torch.neg, torch.clamp, torch.clip,
          torch.sign, torch.erf, torch.log, torch.pow, operator.neg,
          operator.pow, operator.abs, torch.square, torch.reciprocal,
          'relu', 'relu_', 'sigmoid', 'sigmoid_', 'tanh', 'tanh_', 'clamp',
          'clamp_', 'clamp_min', 'clamp_max', 'clip', 'exp', 'sqrt', 'rsqrt',
          'abs', 'neg', 'pow', 'square', 'sign', 'erf', 'log', 'reciprocal',
          'contiguous', 'clone', 'float', 'half', 'double', 'bfloat16',
          'to', 'type_as', 'type', 'detach', 'requires_grad_', 'bernoulli_',
          'bernoulli', 'fill_', 'zero_', 'floor', 'floor_', 'ceil',
          'round', 'sin', 'cos', torch.sin, torch.cos, torch.floor,
          torch.detach, torch.clone, 'hardswish', 'hardsigmoid', 'silu',
          'gelu']
_SHAPE = ['squeeze', torch.squeeze, 'flatten',
          torch.flatten, 'movedim', torch.movedim, 'expand', 'expand_as',
          'repeat', torch.cat, torch.concat, torch.concatenate, torch.stack,
          'unbind', torch.unbind, 'repeat_interleave', torch.tile, 'tile']
# ops that only reorder / insert dims: applied to the compressed slots
_DIM_ORDER = ['permute', torch.permute, 'transpose', torch.transpose,
              'unsqueeze', torch.unsqueeze, 'swapaxes', torch.swapaxes,
              'swapdims', torch.swapdims, 'T', 'mT']
_CREATION = [torch.zeros, torch.ones, torch.full, torch.empty, torch.arange,
             torch.linspace, torch.tensor, torch.zeros_like, torch.ones_like,
             torch.full_like, torch.empty_like, torch.rand, torch.randn,
             torch.rand_like, torch.randn_like, torch.randint, torch.eye,
             torch.as_tensor, torch.meshgrid, 'new_zeros', 'new_ones',
             'new_full', 'new_empty', 'new_tensor']
_OPAQUE = [F.linear, F.conv1d, F.conv2d, F.conv3d, F.conv_transpose2d,
           F.layer_norm, F.group_norm, F.batch_norm, F.instance_norm,
           F.normalize, F.local_response_norm, torch.einsum,
           F.scaled_dot_product_attention, F.multi_head_attention_forward,
           torch.baddbmm, torch.addmm, F.embedding, F.pixel_shuffle,
           F.pixel_unshuffle, F.unfold, F.fold, F.grid_sample,
           F.cosine_similarity, torch.cdist, torch.cumsum, 'cumsum',
           torch.sort, torch.topk, 'topk', 'sort', torch.gather, 'gather',
           torch.index_select, 'index_select', 'scatter', 'scatter_add',
           torch.nn.functional.embedding_bag, torch.diag, 'diag']

register_function_rule(*_ELEMENTWISE)(elementwise)
register_function_rule(*_UNARY)(unary)
register_function_rule(*_SHAPE)(index_apply)


@register_function_rule(*_DIM_ORDER)
def dim_order_rule(ctx, args, kwargs, sargs, skwargs, out):
    """permute / transpose / unsqueeze: same op on the compressed slots."""
    s = sargs[0]
    if not isinstance(s, torch.Tensor):
        return _fixed_like(out)
    target = ctx.node.target
    if ctx.node.op == 'call_method':
        res = getattr(s, target)(*args[1:], **kwargs)
    else:
        res = target(s, *args[1:], **kwargs)
    return compress(res)
register_function_rule(*_CREATION)(creation)
register_function_rule(*_OPAQUE)(opaque)


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
    _tie_sizes(ctx, res, sizes if target not in ('unflatten', torch.unflatten)
               else None)
    res = compress(ctx.union.canon(res))
    var = varying_dims(res)
    const = [d for d in var if literal.get(d, False)]
    if not const:
        return res
    if len(const) == len(var):
        ctx.union.fix(res)
        return compress(ctx.union.canon(res))
    for d in const:
        _union_along(ctx, res, d)
    return compress(ctx.union.canon(res))


def _tie_sizes(ctx, res, sizes) -> None:
    """A reshape size read from another tensor's dim (``x.shape[3]``) stays
    equal to that dim after pruning: unless both already hold the same
    channels, tie them position-wise (or fix them when one side cannot
    shrink)."""
    if sizes is None or isinstance(sizes, torch.fx.Node):
        return
    prov_map = getattr(ctx, 'size_prov', {})
    for d, v in enumerate(sizes):
        if not isinstance(v, torch.fx.Node) or v not in prov_map:
            continue
        prov = prov_map[v]
        if not isinstance(prov, tuple) or d >= res.ndim:
            continue
        src, i = prov
        if not isinstance(src, torch.Tensor):
            continue
        a = _line(ctx, res, d)
        b = _line(ctx, src, i)
        if a.numel() == b.numel() and a.numel() > 1 and \
                torch.equal(torch.sort(a).values, torch.sort(b).values):
            continue  # same channels (e.g. after a shuffle): sizes agree
        if a.numel() == 1 and b.numel() == 1:
            continue
        if a.numel() == b.numel():
            ctx.union.union_tensors(a, b)
            continue
        # one side is constant along its dim: it cannot follow pruning
        for line, const in ((a, b), (b, a)):
            if line.numel() > 1 and const.numel() == 1:
                if int(const) >= 0:
                    ctx.union.union_tensors(line, const)
                else:
                    ctx.union.fix(line)


def _line(ctx, s, dim):
    """Slots of ``s`` along ``dim``; one entry when the dim carries no
    channels (its slot if ``s`` is constant, else NONE). Fixes ``s`` if its
    slots vary along ``dim`` and other dims at once."""
    s = compress(ctx.union.canon(s))
    dim = dim % s.ndim
    var = varying_dims(s)
    if dim not in var:
        value = int(s.reshape(-1)[0]) if not var else NONE
        return torch.full((1,), value, dtype=torch.long)
    if len(var) > 1:
        ctx.union.fix(s)
        return torch.full((1,), FIXED, dtype=torch.long)
    return s.reshape(-1)


@register_function_rule(operator.getitem)
def getitem_rule(ctx, args, kwargs, sargs, skwargs, out):
    """Indexing: containers pick the element; tensors are indexed like the
    real one, but an index into a channel dim has literal positions that
    pruning would shift, so those channels are fixed."""
    s, idx = sargs[0], args[1]
    if not isinstance(args[0], torch.Tensor):
        if isinstance(s, (tuple, list)):
            return s[idx]
        return _fixed_like(out)
    if not isinstance(out, torch.Tensor):
        return None
    s = compress(ctx.union.canon(s))
    items = idx if isinstance(idx, tuple) else (idx,)
    # dims of the input touched by a non-trivial index
    dim, touched = 0, []
    for it in items:
        if it is Ellipsis:
            dim = args[0].ndim - (len(items) - 1 - items.index(Ellipsis)) \
                - sum(1 for x in items[items.index(Ellipsis) + 1:] if x is None)
            continue
        if it is None:
            continue
        if not (isinstance(it, slice) and it == slice(None)):
            touched.append(dim)
        dim += 1
    if any(d < s.ndim and s.shape[d] > 1 for d in touched):
        ctx.union.fix(s)
    return index_apply(ctx, args, kwargs, (s,) + tuple(sargs[1:]), skwargs,
                       out)


@register_function_rule('chunk', torch.chunk, 'split', torch.split,
                        torch.tensor_split, 'tensor_split')
def split_rule(ctx, args, kwargs, sargs, skwargs, out):
    """chunk / split along a channel dim: run-time equal pieces stay equal
    only if every piece keeps the same positions (slots tied across pieces);
    literal section sizes cannot follow pruning (fixed)."""
    x = args[0]
    s = compress(ctx.union.canon(sargs[0]))
    target = ctx.node.target
    dim = _dim_arg(args, kwargs, 2, default=0) % x.ndim
    if dim < s.ndim and s.shape[dim] > 1:
        arg1 = ctx.node.args[1] if len(ctx.node.args) > 1 else None
        c = x.shape[dim]
        if target in ('chunk', torch.chunk):
            n = args[1] if len(args) > 1 else kwargs['chunks']
            equal = c % n == 0
        elif isinstance(arg1, torch.fx.Node) and isinstance(args[1], int):
            n = c // args[1] if args[1] and c % args[1] == 0 else 0
            equal = n > 0
        else:
            equal = False
        if equal:
            _union_along(ctx, s.unflatten(dim, (n, c // n)), dim)
        else:
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
        return _fixed_like(out)
    if target is F.pad or target in (torch.roll, 'roll'):
        return s  # constant along the touched dims: broadcast still valid
    return index_apply(ctx, args, kwargs, (s,) + tuple(sargs[1:]), skwargs,
                       out)


_REDUCE = [torch.mean, torch.sum, torch.amax, torch.amin, torch.std,
           torch.var, torch.logsumexp, torch.max, torch.min, torch.prod,
           torch.norm, 'mean', 'sum', 'amax', 'amin', 'std', 'var',
           'logsumexp', 'max', 'min', 'prod', 'norm', torch.argmax, 'argmax']


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
    if any(s.shape[d] > 1 for d in dims):
        ctx.union.fix(s)
        res = full_like_shape(x.ndim, FIXED)
    else:
        res = s
    if not keep:
        for d in reversed(dims):
            res = res.squeeze(d) if res.ndim > d else res
    if isinstance(out, tuple):  # values, indices
        return tuple(res for _ in out)
    if isinstance(out, torch.Tensor) and res.ndim != out.ndim:
        return full_like_shape(out.ndim, FIXED if bool((s >= 0).any())
                               else NONE)
    return res


_SPATIAL = [F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
            F.adaptive_avg_pool3d, F.adaptive_max_pool1d,
            F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.avg_pool1d,
            F.avg_pool2d, F.avg_pool3d, F.max_pool1d, F.max_pool2d,
            F.max_pool3d, F.interpolate, F.upsample, F.upsample_nearest,
            F.upsample_bilinear, F.lp_pool2d]


@register_function_rule(*_SPATIAL)
def spatial_rule(ctx, args, kwargs, sargs, skwargs, out):
    """Pooling / resizing over dims >= 2: per channel, pass-through."""
    s = compress(ctx.union.canon(sargs[0]))
    if any(d >= 2 for d in varying_dims(s)):
        ctx.union.fix(s)
        return _fixed_like(out)
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
        ctx.union.fix(sa)
        ctx.union.fix(sb)
        return _fixed_like(out)
    try:
        res = elementwise(ctx, (a, b), {}, (sa, sb), {}, out)
    except RuntimeError:  # batch dims that do not broadcast
        return opaque(ctx, args, kwargs, sargs, skwargs, out)
    return res


# --------------------------------------------------------------------------
# module rules
# --------------------------------------------------------------------------
@register_module_rule(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def conv_rule(ctx, m, args, kwargs, sargs, skwargs, out):
    """Convolution: output channels are new slots; a grouped / depthwise
    conv ties each group's input and output channels into one unit (whole
    groups are pruned, so ``groups`` shrinks and group widths stay)."""
    in_slots = channel_slots(ctx.union, sargs[0], 1, m.in_channels)
    g = m.groups
    if g == m.in_channels == m.out_channels and g > 1:
        # depthwise: output channel i is input channel i
        ctx.add_member('conv', in_slots=in_slots, out_slots=in_slots.clone(),
                       producer=True)
        return in_slots.reshape((1, -1) + (1,) * (out.ndim - 2))
    out_slots = ctx.union.new(m.out_channels)
    if g > 1:
        ig, og = m.in_channels // g, m.out_channels // g
        heads = out_slots[::og]  # one representative slot per group
        ctx.union.union_tensors(in_slots, heads.repeat_interleave(ig))
        ctx.union.union_tensors(out_slots, heads.repeat_interleave(og))
    ctx.add_member('conv', in_slots=in_slots, out_slots=out_slots,
                   producer=True)
    return out_slots.reshape((1, -1) + (1,) * (out.ndim - 2))


@register_module_rule(nn.ConvTranspose1d, nn.ConvTranspose2d,
                      nn.ConvTranspose3d)
def conv_transpose_rule(ctx, m, args, kwargs, sargs, skwargs, out):
    """Transposed convolution (ungrouped only; grouped ones are fixed)."""
    if m.groups > 1:
        return opaque(ctx, args, kwargs, sargs, skwargs, out)
    in_slots = channel_slots(ctx.union, sargs[0], 1, m.in_channels)
    out_slots = ctx.union.new(m.out_channels)
    ctx.add_member('conv_transpose', in_slots=in_slots, out_slots=out_slots,
                   producer=True)
    return out_slots.reshape((1, -1) + (1,) * (out.ndim - 2))


@register_module_rule(nn.Linear)
def linear_rule(ctx, m, args, kwargs, sargs, skwargs, out):
    """Linear on the last dim (after flatten the input slots repeat each
    channel over its spatial block, so pruning a channel drops its block)."""
    in_slots = channel_slots(ctx.union, sargs[0], -1, m.in_features)
    out_slots = ctx.union.new(m.out_features)
    ctx.add_member('linear', in_slots=in_slots, out_slots=out_slots,
                   producer=True)
    return out_slots.reshape((1,) * (out.ndim - 1) + (-1,))


@register_module_rule(nn.Embedding)
def embedding_rule(ctx, m, args, kwargs, sargs, skwargs, out):
    out_slots = ctx.union.new(m.embedding_dim)
    ctx.add_member('embedding', out_slots=out_slots, producer=True)
    return out_slots.reshape((1,) * (out.ndim - 1) + (-1,))


def _channelwise_member(kind):
    def rule(ctx, m, args, kwargs, sargs, skwargs, out):
        n = out.shape[1] if out.ndim > 1 else out.shape[0]
        dim = 1 if out.ndim > 1 else 0
        slots = channel_slots(ctx.union, sargs[0], dim, n)
        ctx.add_member(kind, out_slots=slots)
        return slots.reshape((1, -1) + (1,) * (out.ndim - 2)) \
            if out.ndim > 1 else slots
    return rule


register_module_rule(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
                     nn.SyncBatchNorm)(_channelwise_member('bn'))
register_module_rule(nn.InstanceNorm1d, nn.InstanceNorm2d,
                     nn.InstanceNorm3d)(_channelwise_member('in'))


@register_module_rule(nn.GroupNorm)
def group_norm_rule(ctx, m, args, kwargs, sargs, skwargs, out):
    """GroupNorm: statistics are per group, so whole groups are pruned
    (channels of a group tied; ``num_groups`` shrinks)."""
    slots = channel_slots(ctx.union, sargs[0], 1, m.num_channels)
    per = m.num_channels // m.num_groups
    ctx.union.union_tensors(slots, slots[::per].repeat_interleave(per))
    ctx.add_member('gn', out_slots=slots)
    return slots.reshape((1, -1) + (1,) * (out.ndim - 2))


@register_module_rule(nn.LayerNorm)
def layer_norm_rule(ctx, m, args, kwargs, sargs, skwargs, out):
    """LayerNorm over the last dim: prunable, the masked model normalises
    over kept channels only; over several dims it mixes them (fixed)."""
    s = compress(ctx.union.canon(sargs[0]))
    if len(m.normalized_shape) != 1:
        ctx.union.fix(s)
        return _fixed_like(out)
    slots = channel_slots(ctx.union, s, -1, m.normalized_shape[0])
    ctx.add_member('ln', out_slots=slots)
    return slots.reshape((1,) * (out.ndim - 1) + (-1,))


@register_module_rule(nn.PReLU)
def prelu_rule(ctx, m, args, kwargs, sargs, skwargs, out):
    if m.num_parameters == 1:
        return sargs[0]
    return _channelwise_member('prelu')(ctx, m, args, kwargs, sargs,
                                        skwargs, out)


_PASS = [nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.GELU,
         nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.ELU, nn.SELU, nn.Mish,
         nn.Hardtanh, nn.Softplus, nn.CELU, nn.Identity, nn.Dropout,
         nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
         nn.Tanhshrink, nn.Softsign, nn.LogSigmoid, nn.Threshold]


@register_module_rule(*_PASS)
def pass_module_rule(ctx, m, args, kwargs, sargs, skwargs, out):
    """Activations / dropout / identity: element-wise pass-through."""
    return sargs[0] if isinstance(sargs[0], torch.Tensor) else \
        _fixed_like(out)


_SPATIAL_MODULES = [nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d,
                    nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
                    nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
                    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
                    nn.AdaptiveMaxPool3d, nn.LPPool1d, nn.LPPool2d,
                    nn.Upsample, nn.UpsamplingNearest2d,
                    nn.UpsamplingBilinear2d, nn.ZeroPad2d,
                    nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
                    nn.ReflectionPad1d, nn.ReflectionPad2d,
                    nn.ReplicationPad1d, nn.ReplicationPad2d]


@register_module_rule(*_SPATIAL_MODULES)
def spatial_module_rule(ctx, m, args, kwargs, sargs, skwargs, out):
    """Pooling / upsampling / spatial padding: per-channel pass-through."""
    return spatial_rule(ctx, args, kwargs, sargs, skwargs, out)


@register_module_rule(nn.Flatten)
def flatten_module_rule(ctx, m, args, kwargs, sargs, skwargs, out):
    s = _expand(sargs[0], args[0])
    return compress(torch.flatten(s, m.start_dim, m.end_dim))


@register_module_rule(nn.Unflatten)
def unflatten_module_rule(ctx, m, args, kwargs, sargs, skwargs, out):
    s = compress(torch.unflatten(_expand(sargs[0], args[0]), m.dim,
                                 m.unflattened_size))
    var = varying_dims(s)
    dim = m.dim % args[0].ndim
    const = [d for d in var if dim <= d < dim + len(m.unflattened_size)]
    if const:
        ctx.union.fix(s)
    return compress(ctx.union.canon(s))


@register_module_rule(nn.Softmax, nn.LogSoftmax)
def softmax_module_rule(ctx, m, args, kwargs, sargs, skwargs, out):
    return softmax_rule(ctx, (args[0], m.dim), {}, sargs, {}, out)


@register_module_rule(nn.MultiheadAttention, nn.LocalResponseNorm,
                      nn.CrossMapLRN2d, nn.PixelShuffle, nn.PixelUnshuffle,
                      nn.Bilinear, nn.ChannelShuffle)
def opaque_module_rule(ctx, m, args, kwargs, sargs, skwargs, out):
    """Layers whose channel mixing is not modelled: channels fixed."""
    return opaque(ctx, args, kwargs, sargs, skwargs, out)


def _register_torchvision() -> None:
    """Rules for functions torchvision marks with ``torch.fx.wrap``."""
    try:
        from torchvision.models import swin_transformer as swin
        from torchvision.ops import stochastic_depth
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return
    register_function_rule(stochastic_depth)(unary)
    # window attention (qkv / projection weights passed in): opaque
    register_function_rule(swin.shifted_window_attention,
                           swin._get_relative_position_bias)(opaque)

    def patch_merging_pad(ctx, args, kwargs, sargs, skwargs, out):
        # pads H and W of a (..., H, W, C) tensor
        s = compress(ctx.union.canon(sargs[0]))
        if any(s.shape[d] > 1 for d in (-3, -2)):
            ctx.union.fix(s)
            return _fixed_like(out)
        return s
    register_function_rule(swin._patch_merging_pad)(patch_merging_pad)


_register_torchvision()
