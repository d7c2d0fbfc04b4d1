"""Module rules of layers that own no channels (activations, pooling,
padding, reshaping, opaque mixers) and of torchvision's wrapped functions.

Layers with per-channel weights (conv, linear, norms ...) are layer kinds:
their rules live with the rest of their description in :mod:`.layer_kinds`.
"""
from __future__ import annotations

import torch
from torch import nn

from .rules import (
    opaque,
    register_function_rule,
    register_module_rule,
    softmax_rule,
    spatial_rule,
    unary,
)
from .slots import compress, expand_slots, fixed_like, varying_dims

_PASS = [nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.GELU,
         nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.ELU, nn.SELU, nn.Mish,
         nn.Hardtanh, nn.Softplus, nn.CELU, nn.Identity, nn.Dropout,
         nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
         nn.Tanhshrink, nn.Softsign, nn.LogSigmoid, nn.Threshold]


@register_module_rule(*_PASS)
def pass_module_rule(ctx, m, args, kwargs, sargs, skwargs, out):
    """Activations / dropout / identity: element-wise pass-through."""
    return sargs[0] if isinstance(sargs[0], torch.Tensor) else \
        fixed_like(out)


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
    s = expand_slots(sargs[0], args[0])
    return compress(torch.flatten(s, m.start_dim, m.end_dim))


@register_module_rule(nn.Unflatten)
def unflatten_module_rule(ctx, m, args, kwargs, sargs, skwargs, out):
    s = compress(torch.unflatten(expand_slots(sargs[0], args[0]), m.dim,
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
                      nn.Bilinear, nn.ChannelShuffle, nn.RNN, nn.LSTM,
                      nn.GRU)
def opaque_module_rule(ctx, m, args, kwargs, sargs, skwargs, out):
    """Layers whose channel mixing is not modelled (recurrent layers: their
    gates and hidden state are kept whole): channels fixed."""
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
            return fixed_like(out)
        return s
    register_function_rule(swin._patch_merging_pad)(patch_merging_pad)


_register_torchvision()
