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
  module's own drop / activation; the group norms reuse torch's ``gn``
  kind (:mod:`.layer_kinds`, one group: free channels).
* RMS norms (``RmsNorm`` / ``RmsNorm2d`` / ``SimpleNorm`` ..., with or
  without activation; MobileNetV5) and ``GlobalResponseNorm`` (ConvNeXt-V2,
  CSATv2: divides by the mean over channels) are the same kind of layer:
  their masked mode runs the module's own forward, with the kept weights
  and width, on the kept channels. (A GRN's kind lists its channels-last
  axis; its rule and masked mode read the instance's ``channel_dim``.)
* timm subclasses of those classes that keep the base's ``forward`` and
  only change construction (MetaFormer's ``LayerNorm2dNoBias``,
  ``GroupNorm1NoBias``, ``LayerNormNoBias``) get the base's kind.
* ``MaxPool2dSame`` / ``AvgPool2dSame`` (NASNet, PNASNet) pad from the
  input size: per-channel pass-through leaves, like ``nn.MaxPool2d``.
* Weight-standardised convs (``ScaledStdConv2d`` ...; NFNet): conv
  leaves whose dense inputs are fixed (the standardisation spans them),
  outputs prunable.
* SKNet's ``SelectiveKernelAttn`` is a leaf whose rule ties channel
  ``c`` of every path (softmax over paths per channel) and whose export
  slices ``fc_reduce`` inputs / ``fc_select`` outputs of every path.
* Element-wise modules with one-element parameters (``StarReLU``,
  HGNetV2's ``LearnableAffineBlock``) are pass-through leaves.
* Tensor ops without a rule in :mod:`.rules` (``addcmul``, ``~``,
  ``reshape_as``) are in :mod:`.tensor_op_rules`; blocks that branch on feature
  sizes (VGG's ``ConvMlp``, ``MobileVitBlock``) are traced through views
  (:mod:`.timm_views`).
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
from dataclasses import replace

import torch
from torch import nn

from .layer_kinds import (
    LAYER_KINDS,
    LayerKind,
    affine_norm_macs,
    get_layer_kind,
    group_norm_kept,
    is_layer_kind_class,
    register_layer_kind,
    slice_attr,
)
from .rules import creation, register_function_rule, spatial_rule
from .slots import channel_slots, compress, fixed_like

__all__ = ['register_timm_rules', 'timm_available']


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


def _export_norm(m, in_idx, out_idx):
    """Slice a per-channel norm's affine tensors (and its
    ``normalized_shape``, where it has one) to the kept channels."""
    if out_idx is None:
        return
    slice_attr(m, 'weight', 0, out_idx)
    slice_attr(m, 'bias', 0, out_idx)
    if hasattr(m, 'normalized_shape'):
        m.normalized_shape = (out_idx.numel(),)


def _forward_kept(dim: int | None):
    def masked_output(m, x, out, keep):
        """The module's own forward at the kept width on the kept channels
        (layer / RMS norms, GRN: statistics over the channels that remain;
        the module's drop / activation included: what the sliced layer
        computes),
        scattered back (zeros elsewhere); ``dim`` ``None``: the module's
        ``channel_dim``."""
        d = m.channel_dim if dim is None else dim
        saved = {k: m._parameters[k] for k in ('weight', 'bias')
                 if m._parameters.get(k) is not None}
        shape = getattr(m, 'normalized_shape', None)
        # forward itself, not __call__ (this runs inside the masking hook);
        # the kept tensors are indexed views: gradients reach the parameters
        for k, p in saved.items():
            m._parameters[k] = p[keep]
        if shape is not None:
            m.normalized_shape = (keep.numel(),)
        try:
            y = m.forward(x.index_select(d, keep))
        finally:
            m._parameters.update(saved)
            if shape is not None:
                m.normalized_shape = shape
        return out.new_zeros(out.shape).index_copy(d, keep, y)
    return masked_output


def _grn_rule(kind, ctx, m, args, kwargs, sargs, skwargs, out):
    """Global response norm: divides by the mean over its channel dim
    (``m.channel_dim``); prunable, the masked model averages over the kept
    channels only."""
    dim = m.channel_dim % out.ndim
    s = compress(ctx.union.canon(sargs[0]))
    slots = channel_slots(ctx.union, s, dim, m.weight.numel())
    kind.add_member(ctx, out_slots=slots)
    return _channels_on(slots, out, dim)


def _with_post(kept):
    """A norm's masked output followed by its own drop / activation."""
    def masked_output(m, x, out, keep):
        y = kept(m, x, out, keep)
        return out.new_zeros(out.shape).index_copy(
            1, keep, _post(m, y.index_select(1, keep)))
    return masked_output


def _classes(module, names) -> tuple[type, ...]:
    return tuple(getattr(module, n) for n in names if hasattr(module, n))


@functools.cache
def register_timm_rules() -> bool:
    """Register the rules and layer kinds of timm's layers (once).

    Returns:
        Whether timm is available (and the rules registered).
    """
    try:
        import timm.layers as tl
    except ImportError:
        return False
    from .timm_views import register_timm_views
    register_timm_views()
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
            LayerKind('timm_ln', ln_last, _ln_rule(-1), _export_norm,
                      in_dim=-1, out_dim=-1, macs=affine_norm_macs,
                      masked_output=_forward_kept(-1)),
            LayerKind('timm_ln2d', ln_2d, _ln_rule(1), _export_norm,
                      macs=affine_norm_macs, masked_output=_forward_kept(1)),
            LayerKind('timm_rms', _classes(tl, (
                'RmsNorm', 'RmsNormAct', 'RmsNormFp32', 'RmsNormActFp32',
                'SimpleNorm', 'SimpleNormFp32')), _ln_rule(-1), _export_norm,
                in_dim=-1, out_dim=-1, macs=affine_norm_macs,
                masked_output=_forward_kept(-1)),
            LayerKind('timm_rms2d', _classes(tl, (
                'RmsNorm2d', 'RmsNormAct2d', 'RmsNorm2dFp32',
                'RmsNormAct2dFp32', 'SimpleNorm2d', 'SimpleNorm2dFp32')),
                _ln_rule(1), _export_norm, macs=affine_norm_macs,
                masked_output=_forward_kept(1)),
            LayerKind('timm_grn', _classes(importlib.import_module(
                'timm.layers.grn'), ('GlobalResponseNorm',)), _grn_rule,
                _export_norm, in_dim=-1, out_dim=-1, macs=affine_norm_macs,
                masked_output=_forward_kept(None)),
            # torch's GroupNorm kind (one group: free channels), plus the
            # module's own drop / activation in masked mode
            replace(get_layer_kind('gn'), name='timm_gn', types=gn,
                    masked_output=_with_post(group_norm_kept))):
        if kind.types:
            register_layer_kind(kind)
    # MaxPool2dSame is not exported by timm.layers
    pools = _classes(importlib.import_module('timm.layers.pool2d_same'),
                     ('MaxPool2dSame', 'AvgPool2dSame'))
    if pools:
        register_layer_kind(LayerKind('timm_pool_same', pools,
                                      _pool_same_rule, _no_export))
    std = _classes(tl, ('StdConv2d', 'StdConv2dSame', 'ScaledStdConv2d',
                        'ScaledStdConv2dSame'))
    if std:
        conv = get_layer_kind('conv')
        register_layer_kind(replace(conv, name='timm_std_conv', types=std,
                                    rule=_std_conv_rule,
                                    export=_std_conv_export(conv.export)))
    sk_attn = _classes(importlib.import_module(
        'timm.layers.selective_kernel'), ('SelectiveKernelAttn',))
    if sk_attn:
        register_layer_kind(LayerKind('timm_sk_attn', sk_attn, _sk_attn_rule,
                                      _export_sk_attn, in_dim=2, out_dim=2,
                                      macs=_sk_attn_macs))
    scalar = _scalar_affine_classes()
    if scalar:
        register_layer_kind(LayerKind('timm_scalar_affine', scalar,
                                      _pass_rule, _no_export))
    # sin-cos position grids (EVA / DINOv3 / Qwen3-ViT) are built from
    # sizes only: a fresh tensor with a literal shape
    grid = getattr(importlib.import_module('timm.layers.pos_embed_sincos'),
                   '_build_grid', None)
    if grid is not None:
        register_function_rule(grid)(creation)
    _register_plain_subclasses()
    return True


def _scalar_affine_classes() -> tuple[type, ...]:
    """Element-wise timm modules whose parameters are one-element tensors
    (see :func:`_pass_rule`)."""
    import importlib
    found = []
    for mod, name in (('timm.models.metaformer', 'StarReLU'),
                      ('timm.models.hgnet', 'LearnableAffineBlock')):
        try:
            found.append(getattr(importlib.import_module(mod), name))
        except (ImportError, AttributeError):  # another timm version
            continue
    return tuple(found)


def _pass_rule(kind, ctx, m, args, kwargs, sargs, skwargs, out):
    """An element-wise op with scalar parameters (MetaFormer's ``StarReLU``
    ``s * relu(x) ** 2 + b``, HGNetV2's ``LearnableAffineBlock``
    ``s * x + b``). Traced through, its one-element ``s`` / ``b``
    would be free tensors broadcast against, hence tied to, every channel
    of ``x`` (the whole layer one unit); as a leaf it passes ``x``'s slots
    through and owns no channels."""
    s = sargs[0] if sargs else None
    if not isinstance(s, torch.Tensor) or not isinstance(out, torch.Tensor) \
            or s.ndim != out.ndim:
        return fixed_like(out)
    return s


def _pool_same_rule(kind, ctx, m, args, kwargs, sargs, skwargs, out):
    """``MaxPool2dSame`` / ``AvgPool2dSame``: a pooling whose padding is
    computed from the input size (python arithmetic on ``x.shape``, which
    FX cannot trace). As a leaf it is what ``nn.MaxPool2d`` is: per
    channel over dims >= 2, so the slots pass through (no channels of its
    own, nothing to slice)."""
    return spatial_rule(ctx, args, kwargs, sargs, skwargs, out)


def _std_conv_rule(kind, ctx, m, args, kwargs, sargs, skwargs, out):
    """timm's weight-standardised convs (``StdConv2d``,
    ``ScaledStdConv2d`` and their ``Same`` variants; NFNet, BiT, hybrid
    ViTs) standardise each output channel's weight over its (input, kh,
    kw) entries at run time, and ``ScaledStdConv2d`` scales by the fan-in
    fixed at construction. Removing an input channel changes the mean /
    variance of every kept weight, so the sliced conv would differ from
    the masked one: the inputs of a dense one are fixed. Output channels
    (each standardised on its own) and whole groups of a grouped conv (a
    kept output keeps its whole fan-in) prune exactly. As a leaf the
    ``Same`` variants' input-size padding is not traced either."""
    if m.groups == 1 and isinstance(sargs[0], torch.Tensor):
        ctx.union.fix(compress(ctx.union.canon(sargs[0])))
    return get_layer_kind('conv').rule(kind, ctx, m, args, kwargs, sargs,
                                       skwargs, out)


def _std_conv_export(conv_export):
    def export(m, in_idx, out_idx):
        """The conv's slicing plus the per-output ``gain`` (scaled
        variants); ``scale`` stays: each kept fan-in is unchanged."""
        conv_export(m, in_idx, out_idx)
        if out_idx is not None:
            slice_attr(m, 'gain', 0, out_idx)
    return export


def _sk_attn_macs(m, args, kwargs, out) -> int:
    """MACs of a ``SelectiveKernelAttn`` call (a leaf, so the FLOPs counter
    cannot see its two 1x1 convs): both convs on the pooled 1x1 map plus the
    BN's affine, per sample."""
    batch = args[0].shape[0]
    reduce, select = m.fc_reduce, m.fc_select
    return batch * (reduce.in_channels * reduce.out_channels +
                    select.in_channels * select.out_channels +
                    reduce.out_channels)


def _sk_attn_rule(kind, ctx, m, args, kwargs, sargs, skwargs, out):
    """SKNet's ``SelectiveKernelAttn``: ``x`` is ``[B, paths, C, H, W]``,
    the output ``[B, paths, C, 1, 1]`` softmax weights over the paths of
    each channel ``c``, from ``fc_select`` (``paths * C`` outputs, path
    major) after a squeeze ``fc_reduce`` of the path sum. Channel ``c`` of
    every path is one unit (the path sum, the softmax and the weighted sum
    over paths all combine exactly these); pruning it removes input ``c``
    of ``fc_reduce`` and outputs ``p * C + c`` of ``fc_select``. Traced
    through, the sum and softmax over the path dim pinned every channel."""
    x = args[0]
    if not isinstance(x, torch.Tensor) or x.ndim != 5 or \
            x.shape[1] != m.num_paths or not isinstance(sargs[0],
                                                        torch.Tensor):
        raise ValueError(f'SelectiveKernelAttn expects [B, {m.num_paths}, '
                         f'C, H, W], got {tuple(getattr(x, "shape", ()))}')
    s = compress(ctx.union.canon(sargs[0]))
    s = s.reshape((1,) * (x.ndim - s.ndim) + tuple(s.shape))
    if s.shape[1] > 1:
        ctx.union.union_tensors(s, s.narrow(1, 0, 1))
        s = compress(ctx.union.canon(s))
    if s.shape[1] > 1:  # a path fixed, another not: all fixed
        ctx.union.fix(s)
    slots = channel_slots(ctx.union, s, 2, x.shape[2])
    kind.add_member(ctx, in_slots=slots, out_slots=slots)
    return slots.reshape(1, 1, -1, 1, 1)


def _export_sk_attn(m, in_idx, out_idx):
    idx = out_idx if out_idx is not None else in_idx
    if idx is None:
        return
    c = m.fc_reduce.in_channels
    slice_attr(m.fc_reduce, 'weight', 1, idx)
    m.fc_reduce.in_channels = idx.numel()
    sel = torch.cat([p * c + idx for p in range(m.num_paths)])
    slice_attr(m.fc_select, 'weight', 0, sel)
    slice_attr(m.fc_select, 'bias', 0, sel)
    m.fc_select.out_channels = sel.numel()


def _no_export(m, in_idx, out_idx):
    """Nothing per channel to slice."""


def _forward_owner(cls: type) -> type:
    return next(c for c in cls.__mro__ if 'forward' in c.__dict__)


def _register_plain_subclasses() -> None:
    """timm subclasses of a layer kind's class that keep its forward and
    only change construction (MetaFormer's ``LayerNorm2dNoBias``,
    ``GroupNorm1NoBias``, ``LayerNormNoBias``): the same kind. Only exact
    classes of a kind are leaves (a subclass may override forward), so
    these were traced through into an opaque ``F.layer_norm`` that pinned
    every channel it normalises."""
    for kind in list(LAYER_KINDS.values()):
        extra = []
        for base in kind.types:
            stack = list(base.__subclasses__())
            while stack:
                sub = stack.pop()
                stack.extend(sub.__subclasses__())
                if not sub.__module__.startswith('timm.') or \
                        is_layer_kind_class(sub) or sub in extra:
                    continue
                nearest = next(c for c in sub.__mro__
                               if is_layer_kind_class(c))
                if nearest is base and \
                        _forward_owner(sub) is _forward_owner(base):
                    extra.append(sub)
        if extra:
            register_layer_kind(replace(kind, types=kind.types + tuple(
                extra)))
