"""Channel rules for timm's layers (registered on first use, optional).

Nothing in the package requires timm: :func:`register_timm_rules` is called
by the tracer only when ``timm`` is already imported, and does nothing
without it. Most timm blocks (``ConvNormAct``, ``SqueezeExcite``,
``DropPath``, ``MixedConv2d``, ``BlurPool2d``, ``EffectiveSEModule`` ...)
are plain compositions and are traced through; the layers below need more:

* ``BatchNormAct2d`` / ``SyncBatchNormAct`` are traced through too: their
  ``F.batch_norm`` has a rule (:func:`~.rules.batch_norm_rule`) that ties
  the statistics and affine tensors to the channels, and the activation and
  drop inside run as separate nodes. (As leaves they would be matched to
  BatchNorm by the MRO and folded into the conv without their activation.)
* ``Conv2dSame`` is a conv whose padding depends on the input size only,
  timm's ``Linear`` a linear that casts its weight: the ``conv`` /
  ``linear`` layer kinds (traced through, their functional call would pin
  their input channels: e.g. MobileNetV3's 1280-channel ``conv_head``).
* The norms that normalise over channels (``LayerNorm2d`` on dim 1,
  ``LayerNorm``, ``GroupNorm1``, ``GroupNorm``, with or without an
  activation inside) get layer kinds whose masked mode normalises over the
  kept channels only (what the sliced layer computes) and then applies the
  module's own drop / activation.
"""
from __future__ import annotations

import importlib.util
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from .layer_kinds import (
    LayerKind,
    affine_norm_macs,
    get_layer_kind,
    register_layer_kind,
    slice_attr,
)
from .slots import channel_slots, compress, fixed_like

__all__ = ['register_timm_rules', 'timm_available']

_DONE = False


def timm_available() -> bool:
    """Whether timm can be imported."""
    return importlib.util.find_spec('timm') is not None


def _channels_on(slots: torch.Tensor, out: torch.Tensor, dim: int
                 ) -> torch.Tensor:
    shape = [1] * out.ndim
    shape[dim] = -1
    return slots.reshape(shape)


def _post(m: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """The module's own drop / activation after the normalisation."""
    for name in ('drop', 'act'):
        sub = getattr(m, name, None)
        if isinstance(sub, nn.Module):
            y = sub(y)
    return y


# --------------------------------------------------------------------------
# layer norm over the last dim (LayerNorm, LayerNormAct) or dim 1 (2d)
# --------------------------------------------------------------------------
def _ln_rule(dim):
    def rule(kind, ctx, m, args, kwargs, sargs, skwargs, out):
        """Normalises over one channel dim: prunable, the masked model
        normalises over kept channels only."""
        s = compress(ctx.union.canon(sargs[0]))
        if len(m.normalized_shape) != 1:
            ctx.union.fix(s)
            return fixed_like(out)
        slots = channel_slots(ctx.union, s, dim, m.normalized_shape[0])
        kind.add_member(ctx, out_slots=slots)
        return _channels_on(slots, out, dim)
    return rule


def _export_ln(m, in_idx, out_idx):
    if out_idx is None:
        return
    slice_attr(m, 'weight', 0, out_idx)
    slice_attr(m, 'bias', 0, out_idx)
    m.normalized_shape = (out_idx.numel(),)


def _ln_kept(dim):
    def masked_output(m, x, out, keep):
        """What the sliced layer computes, scattered back (zeros
        elsewhere)."""
        w = m.weight[keep] if m.weight is not None else None
        b = m.bias[keep] if m.bias is not None else None
        xs = x.index_select(dim, keep)
        if dim == 1:
            xs = xs.movedim(1, -1)
        y = F.layer_norm(xs, (keep.numel(),), w, b, m.eps)
        if dim == 1:
            y = y.movedim(-1, 1)
        y = _post(m, y)
        return out.new_zeros(out.shape).index_copy(dim, keep, y)
    return masked_output


# --------------------------------------------------------------------------
# group norm (GroupNorm, GroupNorm1, GroupNormAct, GroupNorm1Act)
# --------------------------------------------------------------------------
def _gn_rule(kind, ctx, m, args, kwargs, sargs, skwargs, out):
    """Statistics per group: whole groups are pruned; with one group the
    channels are free (normalised over the kept ones, like LayerNorm)."""
    slots = channel_slots(ctx.union, sargs[0], 1, m.num_channels)
    if m.num_groups > 1:
        per = m.num_channels // m.num_groups
        ctx.union.union_tensors(slots, slots[::per].repeat_interleave(per))
    kind.add_member(ctx, out_slots=slots)
    return _channels_on(slots, out, 1)


def _export_gn(m, in_idx, out_idx):
    if out_idx is None:
        return
    per = m.num_channels // m.num_groups
    slice_attr(m, 'weight', 0, out_idx)
    slice_attr(m, 'bias', 0, out_idx)
    m.num_channels = out_idx.numel()
    m.num_groups = 1 if m.num_groups == 1 else m.num_channels // per


def _gn_kept(m, x, out, keep):
    per = m.num_channels // m.num_groups
    groups = 1 if m.num_groups == 1 else keep.numel() // per
    w = m.weight[keep] if m.weight is not None else None
    b = m.bias[keep] if m.bias is not None else None
    y = F.group_norm(x.index_select(1, keep), groups, w, b, m.eps)
    y = _post(m, y)
    return out.new_zeros(out.shape).index_copy(1, keep, y)


def _classes(module, names) -> tuple[type, ...]:
    return tuple(getattr(module, n) for n in names if hasattr(module, n))


def register_timm_rules() -> bool:
    """Register the rules and layer kinds of timm's layers (once).

    Returns:
        Whether timm is available (and the rules registered).
    """
    global _DONE
    if _DONE:
        return True
    try:
        import timm.layers as tl
    except ImportError:
        return False
    _DONE = True
    # plain subclasses (timm's Linear only casts the weight to the input
    # dtype): their base class's kind, as leaves
    for base, names in (('conv', ('Conv2dSame',)), ('linear', ('Linear',))):
        kind = get_layer_kind(base)
        register_layer_kind(replace(kind, types=tuple(dict.fromkeys(
            kind.types + _classes(tl, names)))))
    ln_last = _classes(tl, ('LayerNorm', 'LayerNormAct', 'LayerNormFp32',
                            'LayerNormActFp32'))
    ln_2d = _classes(tl, ('LayerNorm2d', 'LayerNormAct2d'))
    gn = _classes(tl, ('GroupNorm', 'GroupNorm1', 'GroupNormAct',
                       'GroupNorm1Act'))
    for kind in (
            LayerKind('timm_ln', ln_last, _ln_rule(-1), _export_ln,
                      in_dim=-1, out_dim=-1, macs=affine_norm_macs,
                      masked_output=_ln_kept(-1)),
            LayerKind('timm_ln2d', ln_2d, _ln_rule(1), _export_ln,
                      macs=affine_norm_macs, masked_output=_ln_kept(1)),
            LayerKind('timm_gn', gn, _gn_rule, _export_gn,
                      macs=affine_norm_macs, masked_output=_gn_kept)):
        if kind.types:
            register_layer_kind(kind)
    return True
