"""Detectors in the channel graph: traceable views and detection op rules.

A full detector's ``forward`` resizes and batches images, generates anchors
and post-processes boxes with python control flow that FX cannot trace. What
pruning needs is only the network: backbone -> FPN -> heads. A *traceable
view* is a small module that holds the detector's own submodules **under the
same attribute names** (``view.backbone is det.backbone``) and whose
``forward(images)`` runs the network on a normalised batch tensor and returns
the raw head outputs. Because the names match, the channel graph built on the
view names the detector's layers: masking, ``set_subnet``, ``export()`` and
subnet save / load act on the detector itself, unchanged.

:func:`traceable_view` is applied wherever the graph traces or runs a model
(:class:`~mmrazor_ext.graph.ChannelGraph`, ``run_tensor_forward``); a model
without a registered view is returned as is. torchvision's RetinaNet, FCOS,
SSD / SSDLite and Faster / Mask / Keypoint R-CNN are registered here; add
another detector with :func:`register_traceable_view`.

Faster R-CNN's RoI heads pool proposals that depend on the RPN's outputs.
The view instead pools a fixed set of boxes per image (the whole feature map
and its four quadrants, :func:`fixed_roi_align`) on every level the
detector's pooler reads, so the box head (``fc6`` after ``flatten``) is in
the graph and its input channels follow the FPN's.
"""
from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.fx as fx
from torch import nn
from torchvision.models.detection.fcos import FCOS
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.retinanet import RetinaNet
from torchvision.models.detection.ssd import SSD
from torchvision.ops import roi_align
from torchvision.ops.misc import FrozenBatchNorm2d

from .layer_kinds import (
    LayerKind,
    affine_norm_macs,
    channelwise_rule,
    register_layer_kind,
    slice_attr,
)
from .rules import SizeSite, register_function_rule
from .slots import compress, fixed_like, varying_dims

__all__ = ['TraceableView', 'register_traceable_view', 'traceable_view',
           'fixed_roi_align', 'TRACEABLE_VIEWS']

TRACEABLE_VIEWS: dict[type, Callable[[nn.Module], nn.Module]] = {}


class TraceableView(nn.Module):
    """Base class of views: marks a module as already traceable, so that
    :func:`traceable_view` returns it unchanged.

    Subclasses attach the detector's submodules under their own names (use
    :meth:`attach`) and define ``forward(images)``.
    """

    def attach(self, det: nn.Module, name: str) -> None:
        """Register ``det``'s submodule ``name`` (dotted) at the same path
        in this view, creating plain containers for the parents."""
        parent: nn.Module = self
        *parents, leaf = name.split('.')
        for p in parents:
            if not hasattr(parent, p):
                parent.add_module(p, nn.Module())
            parent = getattr(parent, p)
        parent.add_module(leaf, det.get_submodule(name))


def register_traceable_view(detector_class: type,
                            factory: Callable[[nn.Module], nn.Module] | None
                            = None):
    """Register ``factory(detector) -> view`` for a detector class (and its
    subclasses, nearest class first).

    Usable as ``register_traceable_view(Cls, factory)`` or as a decorator
    ``@register_traceable_view(Cls)``. The view must hold the detector's
    submodules under their names in the detector (see :class:`TraceableView`)
    and cover every parameter of the detector; :func:`traceable_view` checks
    the latter.
    """
    if not isinstance(detector_class, type) or \
            not issubclass(detector_class, nn.Module):
        raise TypeError('register_traceable_view: detector_class must be an '
                        f'nn.Module class, got {detector_class!r}')

    def deco(fn):
        if not callable(fn):
            raise TypeError('register_traceable_view: factory must be '
                            f'callable, got {fn!r}')
        TRACEABLE_VIEWS[detector_class] = fn
        return fn

    return deco if factory is None else deco(factory)


def traceable_view(model: nn.Module) -> nn.Module:
    """The traceable view of ``model`` if its class (or a base class) has
    one registered, else ``model`` itself.

    Raises:
        ValueError: The view leaves out parameters of the detector (their
            channels could silently disagree with the pruned ones); the
            message names them.
    """
    if isinstance(model, (TraceableView, fx.GraphModule)):
        return model
    if 'timm' in sys.modules:  # timm's views register with its rules
        from .timm_rules import register_timm_rules
        register_timm_rules()
    if 'mmdet' in sys.modules:  # mmdet's detectors (the [det] extra)
        from .mmdet_views import register_mmdet_views
        register_mmdet_views()
    factory = next((TRACEABLE_VIEWS[c] for c in type(model).__mro__
                    if c in TRACEABLE_VIEWS), None)
    if factory is None:
        return model
    view = factory(model)
    # only the flag: the submodules keep their own modes
    view.training = model.training
    covered = {id(p) for p in view.parameters()}
    missing = [n for n, p in model.named_parameters() if id(p) not in covered]
    if missing:
        raise ValueError(
            f'traceable view of {type(model).__name__} leaves out '
            f'parameters {missing[:5]}{" ..." if len(missing) > 5 else ""}; '
            'pruning would not update them. Register a view covering them '
            'with mmrazor_ext.graph.register_traceable_view.')
    return view


def _feature_list(feats) -> list:
    """The backbone's levels as a list (a single map is level '0')."""
    if isinstance(feats, (torch.Tensor, fx.Proxy)):
        feats = OrderedDict([('0', feats)])
    return list(feats.values())


class DenseHeadView(TraceableView):
    """RetinaNet / FCOS / SSD: ``head(backbone(images))``, the head outputs
    exactly as the detector's forward computes them before decoding."""

    def __init__(self, det: nn.Module):
        super().__init__()
        self.attach(det, 'backbone')
        self.attach(det, 'head')

    def forward(self, images: torch.Tensor):
        return self.head(_feature_list(self.backbone(images)))


@torch.fx.wrap
def fixed_roi_align(feature: torch.Tensor, output_size: tuple[int, int],
                    sampling_ratio: int, channels_attr: str | None = None
                    ) -> torch.Tensor:
    """RoIAlign of five fixed boxes per image: the whole map and its four
    quadrants, in feature-map coordinates.

    One FX node (``torch.fx.wrap``) whose channel rule is a per-channel
    pass-through; it stands in for the proposal-dependent pooler of a
    two-stage detector.

    Args:
        channels_attr: ``'module.path:attr'``, an int attribute of the
            detector that holds the pooled channel count (mmdet's
            ``SingleRoIExtractor.out_channels``): export sets it to the
            kept count (a size site of the graph).

    Returns:
        ``(N * 5, C, *output_size)``.
    """
    n, _, h, w = feature.shape
    h, w = float(h), float(w)
    quads = [(0., 0., w, h), (0., 0., w / 2, h / 2), (w / 2, 0., w, h / 2),
             (0., h / 2, w / 2, h), (w / 2, h / 2, w, h)]
    rois = torch.tensor([(float(i),) + q for i in range(n) for q in quads],
                        dtype=feature.dtype, device=feature.device)
    return roi_align(feature, rois, output_size, spatial_scale=1.0,
                     sampling_ratio=sampling_ratio, aligned=False)


@register_function_rule(fixed_roi_align)
def fixed_roi_align_rule(ctx, args, kwargs, sargs, skwargs, out):
    """Pooling per channel: the output's channels are the input's; any slot
    variation along the other dims (not a channel map) fixes them."""
    s = compress(ctx.union.canon(sargs[0]))
    if any(d != 1 for d in varying_dims(s)):
        ctx.union.fix(s)
        return fixed_like(out)
    attr = args[3] if len(args) > 3 else kwargs.get('channels_attr')
    sites = getattr(ctx.cg, 'size_sites', None)
    if attr and sites is not None and varying_dims(s) == [1]:
        owner, _, name = attr.rpartition(':')
        slots = s.reshape(-1)
        key = (owner, (name,))
        if key in sites:  # one extractor pools every level: one count
            ctx.union.union_tensors(sites[key].slots, slots)
        else:
            sites[key] = SizeSite(owner, (name,), False, (len(slots),),
                                  slots.clone())
    return s


_ROI_BRANCHES = (('box', 'box_roi_pool', 'box_head', 'box_predictor'),
                 ('mask', 'mask_roi_pool', 'mask_head', 'mask_predictor'),
                 ('keypoint', 'keypoint_roi_pool', 'keypoint_head',
                  'keypoint_predictor'))


class TwoStageView(TraceableView):
    """Faster / Mask / Keypoint R-CNN: the RPN head's per-level outputs and
    each RoI branch (box, mask, keypoint) on fixed RoIs.

    Returns:
        ``(objectness, rpn_box_deltas, *branch outputs)``: lists of per-level
        RPN tensors, then the predictor outputs of each present branch.
    """

    def __init__(self, det: nn.Module):
        super().__init__()
        self.attach(det, 'backbone')
        self.attach(det, 'rpn.head')
        self.branches: list[tuple[str, list[str], tuple[int, int], int]] = []
        for _, pool, head, pred in _ROI_BRANCHES:
            pooler = getattr(det.roi_heads, pool, None)
            if pooler is None:
                continue
            if not hasattr(pooler, 'featmap_names'):
                raise ValueError(
                    f'roi_heads.{pool}: {type(pooler).__name__} is not a '
                    'MultiScaleRoIAlign; register a traceable view for '
                    f'{type(det).__name__}')
            self.attach(det, f'roi_heads.{head}')
            self.attach(det, f'roi_heads.{pred}')
            self.branches.append((f'{head}:{pred}',
                                  list(pooler.featmap_names),
                                  tuple(pooler.output_size),
                                  int(pooler.sampling_ratio)))

    def forward(self, images: torch.Tensor):
        feats = self.backbone(images)
        if isinstance(feats, (torch.Tensor, fx.Proxy)):
            feats = OrderedDict([('0', feats)])
        objectness, deltas = self.rpn.head(list(feats.values()))
        outs = [objectness, deltas]
        for names, levels, size, ratio in self.branches:
            head_name, pred_name = names.split(':')
            pooled = torch.cat([fixed_roi_align(feats[k], size, ratio)
                                for k in levels], 0)
            y = getattr(self.roi_heads, head_name)(pooled)
            pred = getattr(self.roi_heads, pred_name)
            if hasattr(pred, 'cls_score') and hasattr(pred, 'bbox_pred'):
                # FastRCNNPredictor.forward branches on x.dim() (not
                # traceable); on the box head's 2-D output it is these two
                y = y.flatten(1)
                outs.append((pred.cls_score(y), pred.bbox_pred(y)))
            else:
                outs.append(pred(y))
        return tuple(outs)


def _export_frozen_bn(m: nn.Module, in_idx, out_idx) -> None:
    """Slice FrozenBatchNorm2d's four per-channel buffers."""
    if out_idx is None:
        return
    for name in ('weight', 'bias', 'running_mean', 'running_var'):
        slice_attr(m, name, 0, out_idx)


# torchvision's detection backbones use FrozenBatchNorm2d (statistics and
# affine as buffers). Traced through, its buffers become tensor constants of
# the tracer root, which neither masking nor export can reach: it is a
# per-channel layer like BatchNorm2d.
register_layer_kind(LayerKind('frozen_bn', (FrozenBatchNorm2d,),
                              channelwise_rule, _export_frozen_bn,
                              macs=affine_norm_macs))
register_traceable_view(RetinaNet, DenseHeadView)
register_traceable_view(FCOS, DenseHeadView)
register_traceable_view(SSD, DenseHeadView)
register_traceable_view(GeneralizedRCNN, TwoStageView)
