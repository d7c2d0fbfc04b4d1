"""Masked mode: channel masks applied by forward hooks (cheap, trainable).

Producers' outputs are multiplied by their keep mask and every channel-mixing
consumer (conv / linear input, layer norm) sees zeros in dropped channels,
so the masked model computes exactly what the physically sliced model does.
The channel axes and the LayerNorm-style exception come from the layer kind
table (:mod:`.layer_kinds`).
Masks live in non-persistent buffers (they follow ``.to(device)`` and never
enter checkpoints); parameters and BN statistics are not modified.
"""
from __future__ import annotations

import torch
from torch import nn

from .channel_graph import ChannelGraph
from .layer_kinds import get_layer_kind

_TAG = '_mmrazor_ext_mask_hook'
_IN, _OUT, _IDX = '_chmask_in', '_chmask_out', '_chmask_idx'


def _shaped(mask: torch.Tensor, x: torch.Tensor, dim: int) -> torch.Tensor:
    if x.ndim == 1:
        return mask
    dim = dim % x.ndim
    shape = [1] * x.ndim
    shape[dim] = -1
    return mask.reshape(shape).to(x.dtype)


class _InHook:
    def __init__(self, dim):
        self.dim = dim
        setattr(self, _TAG, True)

    def __call__(self, mod, args):
        x = args[0]
        return (x * _shaped(getattr(mod, _IN), x, self.dim),) + tuple(args[1:])


class _OutHook:
    def __init__(self, dim):
        self.dim = dim
        setattr(self, _TAG, True)

    def __call__(self, mod, args, out):
        return out * _shaped(getattr(mod, _OUT), out, self.dim)


class _KeptOutputHook:
    """The kind's own masked output from the kept channel indices (e.g.
    LayerNorm normalises over kept channels only, as the sliced one does)."""

    def __init__(self, fn):
        self.fn = fn
        setattr(self, _TAG, True)

    def __call__(self, mod, args, out):
        return self.fn(mod, args[0], out, getattr(mod, _IDX))


def remove_masks(model: nn.Module) -> None:
    """Remove all mask hooks and buffers from ``model`` (in place)."""
    for m in model.modules():
        for hooks in (m._forward_pre_hooks, m._forward_hooks):
            for k in [k for k, h in hooks.items() if getattr(h, _TAG, False)]:
                del hooks[k]
        for name in (_IN, _OUT, _IDX):
            if name in m._buffers:
                del m._buffers[name]
                m._non_persistent_buffers_set.discard(name)


def apply_masks(model: nn.Module, graph: ChannelGraph,
                gmask: torch.Tensor) -> int:
    """Put ``model`` into masked mode for the global unit mask ``gmask``.

    Args:
        model: The model the graph was built from.
        graph: Its channel graph.
        gmask: ``graph.global_mask(...)``.

    Returns:
        Number of layers that received a hook.
    """
    remove_masks(model)
    count = 0
    for name, rec in graph.layers.items():
        if rec.kind == 'param':
            continue  # free tensors feed masked consumers; nothing to do
        m = model.get_submodule(name)
        kind = get_layer_kind(rec.kind)
        keep_in = graph.layer_keep(rec, gmask, 'in')
        keep_out = graph.layer_keep(rec, gmask, 'out')
        ref = next(iter(m.parameters()), None)
        device = ref.device if ref is not None else None
        hooked = False
        if kind.masked_output is not None:
            if keep_out is not None and not bool(keep_out.all()):
                m.register_buffer(_IDX, keep_out.nonzero().reshape(-1).to(
                    device), persistent=False)
                m.register_forward_hook(_KeptOutputHook(kind.masked_output))
                hooked = True
        else:
            if keep_in is not None and not bool(keep_in.all()):
                m.register_buffer(_IN, keep_in.float().to(device),
                                  persistent=False)
                m.register_forward_pre_hook(_InHook(kind.in_dim))
                hooked = True
            if keep_out is not None and not bool(keep_out.all()):
                m.register_buffer(_OUT, keep_out.float().to(device),
                                  persistent=False)
                m.register_forward_hook(_OutHook(kind.out_dim))
                hooked = True
        count += hooked
    return count
