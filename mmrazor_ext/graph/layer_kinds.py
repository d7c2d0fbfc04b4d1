"""Layer kinds: the one table of what the project knows per prunable layer.

A :class:`LayerKind` describes one family of modules with per-channel
weights (convolution, linear, the norms ...):

* ``types``: the module classes it matches (looked up along the MRO);
* ``rule``: its channel rule for the dependency analysis (which slots are
  its input / output channels and which of them are tied);
* ``in_dim`` / ``out_dim``: the channel axis of its input / output
  activations, which masked mode multiplies by the keep mask, or
  ``masked_output`` when zeroing is not enough (LayerNorm);
* ``export``: how to slice the module to the kept channels;
* ``macs``: its dense multiply-accumulates, and ``fan_in_pruned``: whether
  pruning its inputs also shrinks it. Pruned MACs and weight parameters are
  ``dense x kept output fraction (x kept input fraction if fan_in_pruned)``;
  other parameters (bias, affine) scale with the output fraction;
* ``filters``: its weight with output channels first (what weight metrics
  score).

Masking (:mod:`.masking`), export (:mod:`.export`), the channel analysis,
MACs counting (:mod:`mmrazor_ext.estimators`), the pruner's MACs / params
estimates and the weight metrics all read this table, so a new layer kind is
one file: write those functions and call :func:`register_layer_kind`.
A class registered here is also traced as one call (a leaf module).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .op_table import OpTable
from .rules import MODULE_RULES, opaque
from .slots import channel_slots, compress, fixed_like

__all__ = ['LayerKind', 'LAYER_KINDS', 'register_layer_kind',
           'unregister_layer_kind', 'get_layer_kind', 'find_layer_kind',
           'is_layer_kind_class', 'slice_attr', 'weight_slicer',
           'group_norm_kept']


def _weight(m: nn.Module) -> torch.Tensor:
    return m.weight


def _never(m: nn.Module) -> bool:
    return False


@dataclass(frozen=True)
class LayerKind:
    """Everything about one prunable layer family (see the module doc).

    Attributes:
        name: Kind name stored in ``LayerRecord.kind`` (``'conv'`` ...).
        types: Module classes it matches (subclasses too, MRO order).
        rule: ``rule(kind, ctx, m, args, kwargs, sargs, skwargs, out)``;
            records the layer with :meth:`add_member` and returns the slot
            structure of ``out`` (see :mod:`.rules`).
        export: ``export(m, in_idx, out_idx)`` slices ``m`` in place to the
            kept input / output channel indices (``None``: all kept).
        producer: Whether its output channels are new (conv / linear); a
            ChannelSpace is created by producers.
        in_dim: Channel axis of its input activation.
        out_dim: Channel axis of its output activation.
        macs: ``macs(m, args, kwargs, out) -> int`` dense MACs of one call
            (``None``: counts zero).
        fan_in_pruned: ``fn(m) -> bool``: its weight / MACs shrink with the
            kept fraction of input channels too (dense conv and linear;
            grouped convs lose whole groups, so only the output fraction).
        filters: ``fn(m) -> tensor``: the weight, output channels first.
        masked_output: ``fn(m, x, out, keep) -> tensor``: masked-mode output
            given the input ``x`` and the kept output channel indices, for
            layers whose statistics span channels (``None``: the output is
            multiplied by the keep mask).
    """

    name: str
    types: tuple[type, ...]
    rule: Callable
    export: Callable
    producer: bool = False
    in_dim: int = 1
    out_dim: int = 1
    macs: Callable | None = None
    fan_in_pruned: Callable[[nn.Module], bool] = _never
    filters: Callable[[nn.Module], torch.Tensor] = _weight
    masked_output: Callable | None = None

    def add_member(self, ctx, in_slots=None, out_slots=None) -> None:
        """Record the current module as a layer of this kind."""
        ctx.add_member(self.name, in_slots=in_slots, out_slots=out_slots,
                       producer=self.producer)


#: ``{kind name: LayerKind}``
LAYER_KINDS: dict[str, LayerKind] = {}
_KIND_OF_TYPE = OpTable()  # module class -> kind name


def register_layer_kind(kind: LayerKind) -> LayerKind:
    """Add (or replace) a layer kind and register its channel rule.

    Returns:
        ``kind``.
    """
    if kind.name in LAYER_KINDS:
        unregister_layer_kind(kind.name)
    LAYER_KINDS[kind.name] = kind
    rule = functools.partial(kind.rule, kind)
    for cls in kind.types:
        _KIND_OF_TYPE[cls] = kind.name
        MODULE_RULES[cls] = rule
    return kind


def unregister_layer_kind(name: str) -> None:
    """Remove a layer kind, its classes and their channel rules."""
    kind = LAYER_KINDS.pop(name)
    for cls in kind.types:
        if _KIND_OF_TYPE.get(cls) == name:
            del _KIND_OF_TYPE[cls]
            MODULE_RULES.pop(cls, None)


def get_layer_kind(name: str) -> LayerKind:
    """The registered kind ``name``; a ``KeyError`` lists the known ones."""
    try:
        return LAYER_KINDS[name]
    except KeyError:
        raise KeyError(f'no layer kind {name!r} (registered: '
                       f'{sorted(LAYER_KINDS)}); add one with '
                       'mmrazor_ext.graph.register_layer_kind') from None


def find_layer_kind(m: nn.Module) -> LayerKind | None:
    """The kind matching module ``m`` (nearest class first) or ``None``."""
    name = _KIND_OF_TYPE.lookup_module(m)
    return None if name is None else LAYER_KINDS[name]


def is_layer_kind_class(cls: type) -> bool:
    """Whether ``cls`` itself (not only a base class) has a layer kind."""
    return cls in _KIND_OF_TYPE


# --------------------------------------------------------------------------
# slicing helpers
# --------------------------------------------------------------------------
def slice_attr(m: nn.Module, name: str, dim: int, idx: torch.Tensor) -> None:
    """Replace tensor ``m.<name>`` by its ``idx`` entries along ``dim``
    (a new tensor; parameters stay parameters, missing ones are skipped)."""
    t = getattr(m, name, None)
    if t is None:
        return
    new = t.detach().index_select(dim, idx.to(t.device))
    if isinstance(t, nn.Parameter):
        setattr(m, name, nn.Parameter(new, requires_grad=t.requires_grad))
    else:
        m._buffers[name] = new


def weight_slicer(w_out: int, w_in: int, out_attr: str, in_attr: str
                  ) -> Callable:
    """Slicer of a layer with a weight (output channels on dim ``w_out``,
    inputs on ``w_in``) and an optional bias per output channel; the
    channel counts are the attributes ``out_attr`` / ``in_attr``."""
    def export(m, in_idx, out_idx):
        if out_idx is not None:
            slice_attr(m, 'weight', w_out, out_idx)
            slice_attr(m, 'bias', 0, out_idx)
            setattr(m, out_attr, out_idx.numel())
        if in_idx is not None:
            slice_attr(m, 'weight', w_in, in_idx)
            setattr(m, in_attr, in_idx.numel())
    return export


def channel_slicer(names: tuple[str, ...], size_attr: str) -> Callable:
    """Slicer of a per-channel layer: tensors ``names`` along dim 0 and the
    channel count ``size_attr``."""
    def export(m, in_idx, out_idx):
        if out_idx is None:
            return
        for name in names:
            slice_attr(m, name, 0, out_idx)
        setattr(m, size_attr, out_idx.numel())
    return export


def _numel(x) -> int:
    return x.numel() if isinstance(x, torch.Tensor) else 0


def _as_channels(slots: torch.Tensor, out: torch.Tensor, dim: int
                 ) -> torch.Tensor:
    """1-D channel slots as a broadcastable slot tensor shaped like
    ``out`` with the channels on ``dim`` (1 or -1)."""
    if out.ndim <= 1:
        return slots
    shape = [1] * out.ndim
    shape[dim] = -1
    return slots.reshape(shape)


# --------------------------------------------------------------------------
# convolution
# --------------------------------------------------------------------------
def conv_rule(kind, ctx, m, args, kwargs, sargs, skwargs, out):
    """Convolution: output channels are new slots; a grouped / depthwise
    conv ties each group's input and output channels into one unit (whole
    groups are pruned, so ``groups`` shrinks and group widths stay)."""
    in_slots = channel_slots(ctx.union, sargs[0], 1, m.in_channels)
    g = m.groups
    if g == m.in_channels == m.out_channels and g > 1:
        # depthwise: output channel i is input channel i
        kind.add_member(ctx, in_slots, in_slots.clone())
        return _as_channels(in_slots, out, 1)
    out_slots = ctx.union.new(m.out_channels)
    if g > 1:
        ig, og = m.in_channels // g, m.out_channels // g
        heads = out_slots[::og]  # one representative slot per group
        ctx.union.union_tensors(in_slots, heads.repeat_interleave(ig))
        ctx.union.union_tensors(out_slots, heads.repeat_interleave(og))
    kind.add_member(ctx, in_slots, out_slots)
    return _as_channels(out_slots, out, 1)


_slice_dense_conv = weight_slicer(0, 1, 'out_channels', 'in_channels')


def export_conv(m, in_idx, out_idx):
    if m.groups == 1:
        return _slice_dense_conv(m, in_idx, out_idx)
    # whole groups are kept (in and out tied per group)
    g = m.groups
    kept = (out_idx.numel() if out_idx is not None
            else m.out_channels) // (m.out_channels // g)
    if out_idx is not None:
        slice_attr(m, 'weight', 0, out_idx)
        slice_attr(m, 'bias', 0, out_idx)
    m.in_channels = (m.in_channels // g) * kept
    m.out_channels = (m.out_channels // g) * kept
    m.groups = kept


def conv_macs(m, args, kwargs, out):
    return _numel(out) * (m.in_channels // m.groups) * math.prod(
        m.kernel_size)


def conv_transpose_rule(kind, ctx, m, args, kwargs, sargs, skwargs, out):
    """Transposed convolution (ungrouped only; grouped ones are fixed)."""
    if m.groups > 1:
        return opaque(ctx, args, kwargs, sargs, skwargs, out)
    in_slots = channel_slots(ctx.union, sargs[0], 1, m.in_channels)
    out_slots = ctx.union.new(m.out_channels)
    kind.add_member(ctx, in_slots, out_slots)
    return _as_channels(out_slots, out, 1)


def conv_transpose_macs(m, args, kwargs, out):
    return (_numel(args[0]) * (m.out_channels // m.groups)
            * math.prod(m.kernel_size))


# --------------------------------------------------------------------------
# linear / embedding
# --------------------------------------------------------------------------
def linear_rule(kind, ctx, m, args, kwargs, sargs, skwargs, out):
    """Linear on the last dim (after flatten the input slots repeat each
    channel over its spatial block, so pruning a channel drops its block)."""
    in_slots = channel_slots(ctx.union, sargs[0], -1, m.in_features)
    out_slots = ctx.union.new(m.out_features)
    kind.add_member(ctx, in_slots, out_slots)
    return _as_channels(out_slots, out, -1)


def linear_macs(m, args, kwargs, out):
    return _numel(out) * m.in_features


def embedding_rule(kind, ctx, m, args, kwargs, sargs, skwargs, out):
    """Embedding: the embedding dim is new channels."""
    out_slots = ctx.union.new(m.embedding_dim)
    kind.add_member(ctx, out_slots=out_slots)
    return _as_channels(out_slots, out, -1)


def _export_embedding(m, in_idx, out_idx):
    if out_idx is not None:
        slice_attr(m, 'weight', 1, out_idx)
        m.embedding_dim = out_idx.numel()


# --------------------------------------------------------------------------
# per-channel layers (norms, PReLU)
# --------------------------------------------------------------------------
def channelwise_rule(kind, ctx, m, args, kwargs, sargs, skwargs, out):
    """Per-channel layer: its channels are its input's (on ``out_dim``)."""
    dim = kind.out_dim if out.ndim > 1 else 0
    slots = channel_slots(ctx.union, sargs[0], dim, out.shape[dim])
    kind.add_member(ctx, out_slots=slots)
    return _as_channels(slots, out, dim)


def prelu_rule(kind, ctx, m, args, kwargs, sargs, skwargs, out):
    """PReLU: one slope (pass-through) or one per channel."""
    if m.num_parameters == 1:
        return sargs[0]
    return channelwise_rule(kind, ctx, m, args, kwargs, sargs, skwargs, out)


def group_norm_rule(kind, ctx, m, args, kwargs, sargs, skwargs, out):
    """GroupNorm: statistics are per group, so whole groups are pruned
    (channels of a group tied; ``num_groups`` shrinks). With one group the
    channels are free: the sliced layer normalises over the kept ones
    (:func:`group_norm_kept`), like LayerNorm."""
    slots = channel_slots(ctx.union, sargs[0], 1, m.num_channels)
    per = m.num_channels // m.num_groups
    if m.num_groups > 1:
        ctx.union.union_tensors(slots, slots[::per].repeat_interleave(per))
    kind.add_member(ctx, out_slots=slots)
    return _as_channels(slots, out, 1)


def _export_gn(m, in_idx, out_idx):
    if out_idx is None:
        return
    per = m.num_channels // m.num_groups
    slice_attr(m, 'weight', 0, out_idx)
    slice_attr(m, 'bias', 0, out_idx)
    m.num_channels = out_idx.numel()
    m.num_groups = 1 if m.num_groups == 1 else m.num_channels // per


def group_norm_kept(m, x, out, keep):
    """What the sliced GroupNorm computes (statistics over the kept
    channels of each kept group), scattered back (zeros elsewhere)."""
    per = m.num_channels // m.num_groups
    groups = 1 if m.num_groups == 1 else keep.numel() // per
    w = m.weight[keep] if m.weight is not None else None
    b = m.bias[keep] if m.bias is not None else None
    y = F.group_norm(x.index_select(1, keep), groups, w, b, m.eps)
    return out.new_zeros(out.shape).index_copy(1, keep, y)


def layer_norm_rule(kind, ctx, m, args, kwargs, sargs, skwargs, out):
    """LayerNorm over the last dim: prunable, the masked model normalises
    over kept channels only; over several dims it mixes them (fixed)."""
    s = compress(ctx.union.canon(sargs[0]))
    if len(m.normalized_shape) != 1:
        ctx.union.fix(s)
        return fixed_like(out)
    slots = channel_slots(ctx.union, s, -1, m.normalized_shape[0])
    kind.add_member(ctx, out_slots=slots)
    return _as_channels(slots, out, -1)


def _export_ln(m, in_idx, out_idx):
    if out_idx is None:
        return
    slice_attr(m, 'weight', 0, out_idx)
    slice_attr(m, 'bias', 0, out_idx)
    m.normalized_shape = (out_idx.numel(),)


def _layer_norm_kept(m, x, out, keep):
    """What the sliced LayerNorm computes, scattered back (zeros elsewhere)."""
    w = m.weight[keep] if m.weight is not None else None
    b = m.bias[keep] if m.bias is not None else None
    y = F.layer_norm(x.index_select(-1, keep), (keep.numel(),), w, b, m.eps)
    return out.new_zeros(out.shape).index_copy(-1, keep, y)


def affine_norm_macs(m, args, kwargs, out):
    """One multiply-add per element for the affine scale/shift of a folded
    (inference) normalisation; BN folds into the conv at deploy time."""
    return _numel(out) if getattr(m, 'affine', True) and \
        getattr(m, 'elementwise_affine', True) else 0


def _dense(m: nn.Module) -> bool:
    return getattr(m, 'groups', 1) == 1


def _always(m: nn.Module) -> bool:
    return True


_BN_TENSORS = ('weight', 'bias', 'running_mean', 'running_var')

for _kind in (
        LayerKind('conv', (nn.Conv1d, nn.Conv2d, nn.Conv3d), conv_rule,
                  export_conv, producer=True, macs=conv_macs,
                  fan_in_pruned=_dense),
        LayerKind('conv_transpose', (nn.ConvTranspose1d, nn.ConvTranspose2d,
                                     nn.ConvTranspose3d),
                  conv_transpose_rule,
                  weight_slicer(1, 0, 'out_channels', 'in_channels'),
                  producer=True, macs=conv_transpose_macs,
                  fan_in_pruned=_dense,
                  filters=lambda m: m.weight.transpose(0, 1)),
        LayerKind('linear', (nn.Linear,), linear_rule,
                  weight_slicer(0, 1, 'out_features', 'in_features'),
                  producer=True, in_dim=-1, out_dim=-1, macs=linear_macs,
                  fan_in_pruned=_always),
        LayerKind('embedding', (nn.Embedding,), embedding_rule,
                  _export_embedding, producer=True, in_dim=-1, out_dim=-1,
                  filters=lambda m: m.weight.t()),
        LayerKind('bn', (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
                         nn.SyncBatchNorm), channelwise_rule,
                  channel_slicer(_BN_TENSORS, 'num_features'),
                  macs=affine_norm_macs),
        LayerKind('in', (nn.InstanceNorm1d, nn.InstanceNorm2d,
                         nn.InstanceNorm3d), channelwise_rule,
                  channel_slicer(_BN_TENSORS, 'num_features'),
                  macs=affine_norm_macs),
        LayerKind('gn', (nn.GroupNorm,), group_norm_rule, _export_gn,
                  macs=affine_norm_macs, masked_output=group_norm_kept),
        LayerKind('ln', (nn.LayerNorm,), layer_norm_rule, _export_ln,
                  in_dim=-1, out_dim=-1, macs=affine_norm_macs,
                  masked_output=_layer_norm_kept),
        LayerKind('prelu', (nn.PReLU,), prelu_rule,
                  channel_slicer(('weight',), 'num_parameters')),
):
    register_layer_kind(_kind)
