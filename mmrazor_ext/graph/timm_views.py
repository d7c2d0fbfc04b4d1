"""Traceable views of timm models whose blocks branch on feature-map sizes.

Two timm blocks decide on python ``if`` whether to resize their input,
which FX cannot trace (the sizes are proxies):

* VGG's ``ConvMlp`` (``pre_logits``) average-pools a map smaller than its
  7 x 7 ``fc1`` kernel up to 7 x 7;
* MobileViT's ``MobileVitBlock`` interpolates a map whose size is not a
  multiple of the patch size, and back after the transformer.

SKNet's ``SelectiveKernel`` (timm ``ResNet``) traces, but splits its input
with a literal size that export would leave stale: its twin chunks into
``num_paths`` equal pieces instead (the same split at any width).

A *traceable twin* is a shallow copy of such a block whose class is a
subclass with a traceable ``forward``: the same submodules, parameters and
buffers (shared, not copied), the decision moved into a function that FX
records as one call (``torch.fx.wrap``) and whose channel rule is a
per-channel pass-through. :func:`timm_view` returns the model with its
blocks replaced by twins along shallow-copied parents, under the same
names, as a :class:`~.detection_rules.TraceableView`: the channel graph,
masking, export and subnet save / load built on it name and act on the
model's own layers. Eager outputs of a twin equal the block's.
"""
from __future__ import annotations

import functools

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .detection_rules import TraceableView, register_traceable_view
from .rules import register_function_rule, spatial_rule
from .slots import fixed_like

__all__ = ['timm_view', 'register_timm_views', 'pool_to_min_size',
           'resize_to_multiple', 'resize_like', 'TWINS']

#: block class -> subclass with a traceable forward
TWINS: dict[type, type] = {}
_VIEW_CLASSES: dict[type, type] = {}


@torch.fx.wrap
def pool_to_min_size(x: torch.Tensor, size: int) -> torch.Tensor:
    """``ConvMlp``'s guard: average-pool ``x`` up to ``size`` x ``size``
    when it is smaller (each side), else ``x``."""
    h, w = x.shape[-2], x.shape[-1]
    if h < size or w < size:
        return F.adaptive_avg_pool2d(x, (max(size, h), max(size, w)))
    return x


@torch.fx.wrap
def resize_to_multiple(x: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    """``MobileVitBlock``'s unfold guard: bilinear resize to the next
    multiple of the patch size (each side), else ``x``."""
    h, w = x.shape[-2], x.shape[-1]
    nh, nw = -(-h // ph) * ph, -(-w // pw) * pw
    if (nh, nw) != (h, w):
        return F.interpolate(x, size=(nh, nw), mode='bilinear',
                             align_corners=False)
    return x


@torch.fx.wrap
def resize_like(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``MobileVitBlock``'s fold guard: bilinear resize ``x`` back to the
    spatial size of ``like`` when it differs, else ``x``."""
    size = tuple(like.shape[-2:])
    if tuple(x.shape[-2:]) != size:
        return F.interpolate(x, size=size, mode='bilinear',
                             align_corners=False)
    return x


@register_function_rule(pool_to_min_size, resize_to_multiple, resize_like)
def resize_rule(ctx, args, kwargs, sargs, skwargs, out):
    """Spatial resizing of the first argument, per channel (``like`` only
    lends its size: its channels are not involved)."""
    if not isinstance(sargs[0], torch.Tensor):
        return fixed_like(out)
    return spatial_rule(ctx, args[:1], {}, sargs[:1], {}, out)


def _conv_mlp_forward(self, x):
    x = pool_to_min_size(x, self.input_kernel_size)
    x = self.fc1(x)
    x = self.act1(x)
    x = self.drop(x)
    x = self.fc2(x)
    return self.act2(x)


def _mobilevit_block_forward(self, x):
    shortcut = x
    x = self.conv_kxk(x)
    x = self.conv_1x1(x)
    local = x
    ph, pw = self.patch_size
    x = resize_to_multiple(x, ph, pw)
    b, c, h, w = x.shape
    nph, npw = h // ph, w // pw
    n = nph * npw
    # [B, C, H, W] -> [B * P, N, C] (as timm's forward)
    x = x.reshape(b * c * nph, ph, npw, pw).transpose(1, 2)
    x = x.reshape(b, c, n, self.patch_area).transpose(1, 3).reshape(
        b * self.patch_area, n, -1)
    x = self.transformer(x)
    x = self.norm(x)
    # [B * P, N, C] -> [B, C, H, W]
    x = x.contiguous().view(b, self.patch_area, n, -1)
    x = x.transpose(1, 3).reshape(b * c * nph, npw, ph, pw)
    x = x.transpose(1, 2).reshape(b, c, nph * ph, npw * pw)
    x = resize_like(x, local)
    x = self.conv_proj(x)
    if self.conv_fusion is not None:
        x = self.conv_fusion(torch.cat((shortcut, x), dim=1))
    return x


def _selective_kernel_forward(self, x):
    # timm splits with the literal size ``self.in_channels // num_paths``
    # (stale once the input is pruned); equal run-time pieces are the same
    # split and stay valid: the chunk rule ties position i of every piece
    if self.split_input:
        pieces = torch.chunk(x, self.num_paths, 1)
        x_paths = [op(pieces[i]) for i, op in enumerate(self.paths)]
    else:
        x_paths = [op(x) for op in self.paths]
    x = torch.stack(x_paths, dim=1)
    # SelectiveKernelAttn is a leaf (timm_rules): it ties channel c of
    # every path, so the weighted sum over paths is per channel
    x = x * self.attn(x)
    return torch.sum(x, dim=1)


def _twin_class(cls: type, forward) -> type:
    return type(f'Traceable{cls.__name__}', (cls,), {
        'forward': forward, '__module__': __name__,
        '__doc__': f'{cls.__name__} with a traceable forward (same '
                   'computation; see mmrazor_ext.graph.timm_views).'})


def _shallow(m: nn.Module, cls: type | None = None) -> nn.Module:
    """A new module object sharing ``m``'s attributes (parameters, buffers,
    children, hooks); its own ``_modules`` dict so children can be
    replaced without touching ``m``."""
    cls = cls or type(m)
    new = cls.__new__(cls)
    new.__dict__.update(m.__dict__)
    new._modules = dict(m._modules)
    return new


def _view_class(cls: type) -> type:
    if cls not in _VIEW_CLASSES:
        _VIEW_CLASSES[cls] = type(f'{cls.__name__}TraceableView',
                                  (cls, TraceableView),
                                  {'__module__': __name__})
    return _VIEW_CLASSES[cls]


def timm_view(model: nn.Module) -> nn.Module:
    """``model`` with every block of a :data:`TWINS` class replaced by its
    traceable twin (same names, shared tensors); ``model`` itself when it
    has none."""
    if isinstance(model, (TraceableView, fx.GraphModule)):
        return model
    targets = [name for name, m in model.named_modules()
               if type(m) in TWINS and name]
    if not targets:
        return model
    root = _shallow(model, _view_class(type(model)))
    copies = {id(root)}
    for name in targets:
        *parents, leaf = name.split('.')
        owner = root
        for p in parents:  # copy the path (the model's own stays intact)
            child = owner._modules[p]
            if id(child) not in copies:
                child = _shallow(child)
                copies.add(id(child))
                owner._modules[p] = child
            owner = child
        block = owner._modules[leaf]
        owner._modules[leaf] = _shallow(block, TWINS[type(block)])
    return root


@functools.cache
def register_timm_views() -> bool:
    """Register the twins and the views of the timm model classes that
    hold such blocks (once; ``False`` without timm)."""
    try:
        from timm.layers.selective_kernel import SelectiveKernel
        from timm.models.byobnet import ByobNet
        from timm.models.mobilevit import MobileVitBlock
        from timm.models.resnet import ResNet
        from timm.models.vgg import VGG, ConvMlp
    except ImportError:
        return False
    TWINS[ConvMlp] = _twin_class(ConvMlp, _conv_mlp_forward)
    TWINS[MobileVitBlock] = _twin_class(MobileVitBlock,
                                        _mobilevit_block_forward)
    TWINS[SelectiveKernel] = _twin_class(SelectiveKernel,
                                         _selective_kernel_forward)
    for cls in (VGG, ByobNet, ResNet):
        register_traceable_view(cls, timm_view)
    return True
