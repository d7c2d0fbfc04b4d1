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
