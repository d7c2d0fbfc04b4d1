"""Channel rules for more tensor ops (first met in timm models; general, so
registered on import of :mod:`mmrazor_ext.graph` for every model).

* ``torch.addcmul`` / ``addcdiv`` (ResMLP's ``Affine``:
  ``addcmul(beta, alpha, x)`` = ``beta + alpha * x``): element-wise on
  broadcast inputs, so the per-channel ``alpha`` / ``beta`` (free tensors,
  sliced by export) are tied to ``x``'s channels like a layer scale.
* ``~x`` / ``logical_not`` / ``bitwise_not`` (EdgeNeXt's positional
  encoding inverts a boolean mask): per element, so the slots pass through;
  on a mask they are the mask's (no channels), on a channel tensor each
  channel stays at its position.
* ``x.reshape_as(other)`` / ``x.view_as(other)`` (LeViT's ``LinearNorm``:
  ``bn(x.flatten(0, 1)).reshape_as(x)``): the target shape is read from
  ``other`` at run time, so it follows pruning only when the result keeps
  ``other``'s pruning pattern; both are tied position-wise.
* ``x.unfold(dim, size, step)`` (HaloNet's blocked attention) and
  ``flip`` only rearrange and repeat elements, so the op itself on the slot
  tensor gives the output's slots.
* ``t[idx] = v`` (``operator.setitem``, traced with the example input:
  MViT-V2's relative positions, FasterNet's partial convolution): writes
  that leave every channel-carrying dim of ``t`` whole tie ``v`` to the
  written positions like an element-wise op; a write into part of a
  channel dim (or by tensor index) is opaque (both sides fixed).
* integer / boolean casts (``x.long()``: SAM's relative-position indices)
  keep every element where it was, like the float casts.
* ``F.unfold`` / ``nn.Unfold`` (im2col; TNT, VOLO): output channel
  ``c * kh * kw + j`` holds input channel ``c``, so each channel's slot is
  repeated ``kh * kw`` times along the channel dim (zero padding adds
  positions, not channels).
"""
from __future__ import annotations

import math
import operator

import torch
import torch.nn.functional as F
from torch import nn

from .rules import (
    elementwise,
    index_apply,
    opaque,
    register_function_rule,
    register_module_rule,
    unary,
)
from .slots import compress, expand_slots, fixed_like, varying_dims

__all__ = ['reshape_as_rule', 'im2col_rule']

register_function_rule(torch.addcmul, torch.addcdiv, 'addcmul', 'addcdiv',
                       'addcmul_', 'addcdiv_')(elementwise)
register_function_rule(operator.invert, torch.logical_not, 'logical_not',
                       torch.bitwise_not, 'bitwise_not', '__invert__')(unary)
# views that only rearrange / repeat elements: the op on the slot tensor
register_function_rule('unfold', 'flip', torch.flip)(index_apply)


@register_function_rule('reshape_as', 'view_as')
def reshape_as_rule(ctx, args, kwargs, sargs, skwargs, out):
    """``x.reshape_as(other)``: the slots of ``x`` reshaped like ``other``,
    then tied element-wise to ``other``'s slots. After pruning ``other``
    has as many kept entries per dim as the result then has, so the
    reshape of the sliced ``x`` to the sliced ``other``'s shape is valid;
    a pattern ``other`` cannot follow (e.g. a channel dim of ``x`` spread
    over a literal-size dim of ``other``) ends up fixed with it."""
    if len(args) < 2 or not isinstance(args[1], torch.Tensor) or \
            not isinstance(out, torch.Tensor):
        return fixed_like(out)
    res = index_apply(ctx, args, kwargs, sargs, skwargs, out)
    mine = expand_slots(res, out)
    other = expand_slots(sargs[1], args[1])
    # a channel facing a position without one (NONE) could not follow it
    ctx.union.fix(mine[(other < 0) & (mine >= 0)])
    ctx.union.fix(other[(mine < 0) & (other >= 0)])
    ctx.union.union_tensors(mine, other)
    return compress(ctx.union.canon(res))


def _im2col(ctx, s, kernel_size, out):
    """Slots of ``F.unfold(x, kernel_size, ...)`` from ``x``'s slots."""
    if not isinstance(s, torch.Tensor) or not isinstance(out, torch.Tensor):
        return fixed_like(out)
    s = compress(ctx.union.canon(s))
    if any(d != 1 for d in varying_dims(s)) or s.ndim != 4:
        # channels that vary along space: no per-channel picture
        ctx.union.fix(s)
        return fixed_like(out)
    k = kernel_size if isinstance(kernel_size, (tuple, list)) else \
        (kernel_size, kernel_size)
    per = s.reshape(-1).repeat_interleave(math.prod(k))
    return per.reshape(1, -1, 1)


@register_function_rule(F.unfold)
def im2col_rule(ctx, args, kwargs, sargs, skwargs, out):
    """``F.unfold``: see the module doc."""
    ks = kwargs.get('kernel_size', args[1] if len(args) > 1 else None)
    return _im2col(ctx, sargs[0], ks, out)


@register_module_rule(nn.Unfold)
def unfold_module_rule(ctx, m, args, kwargs, sargs, skwargs, out):
    """``nn.Unfold``: see the module doc."""
    return _im2col(ctx, sargs[0], m.kernel_size, out)


register_function_rule('long', 'int', 'short', 'bool', 'byte', 'char')(unary)


def _written_dims(idx, ndim: int) -> set[int] | None:
    """Dims of a ``ndim``-d tensor that index ``idx`` restricts; ``None``
    for an index no rule follows (tensors, lists, new axes)."""
    items = list(idx) if isinstance(idx, tuple) else [idx]
    if any(i is None or isinstance(i, (torch.Tensor, list)) for i in items):
        return None
    dims = list(range(len(items)))
    if any(i is Ellipsis for i in items):
        k = next(j for j, i in enumerate(items) if i is Ellipsis)
        after = len(items) - k - 1
        dims = list(range(k)) + list(range(ndim - after, ndim))
        items = items[:k] + items[k + 1:]
    return {d for d, i in zip(dims, items)
            if not (isinstance(i, slice) and i == slice(None))}


@register_function_rule(operator.setitem)
def setitem_rule(ctx, args, kwargs, sargs, skwargs, out):
    t, idx, v = args
    st, sv = sargs[0], sargs[2]
    if not isinstance(t, torch.Tensor) or not isinstance(st, torch.Tensor):
        return None  # a list / dict item: no channels
    written = _written_dims(idx, t.ndim)
    var = varying_dims(compress(ctx.union.canon(st)))
    if written is None or written & set(var):
        opaque(ctx, args, kwargs, sargs, skwargs, out)
        return None
    if isinstance(v, torch.Tensor) and isinstance(sv, torch.Tensor):
        region = expand_slots(st, t)[idx]
        vs = expand_slots(sv, v)
        vs = vs.reshape((1,) * (region.ndim - vs.ndim) + tuple(vs.shape))
        ctx.union.union_tensors(region, torch.broadcast_to(vs, region.shape))
    return None
