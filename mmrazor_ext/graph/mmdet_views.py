"""Traceable views of mmdet detectors (the ``[det]`` extra).

mmdet's ``SingleStageDetector`` (RetinaNet, FCOS, ATSS, ...) and
``TwoStageDetector`` (Faster / Mask R-CNN, ...) run their network as
``backbone -> neck -> heads``; what FX cannot follow is the rest of their
``forward`` (data samples, anchors, NMS) and the RoI heads, which pool
proposals that the RPN computes. As for torchvision's detectors
(:mod:`.detection_rules`), a view holds the detector's own submodules under
the same names and runs only the network on a normalised batch:

* one-stage: ``bbox_head(neck(backbone(images)))``, the head's raw
  per-level outputs;
* two-stage: the RPN head's per-level outputs, then each RoI branch (box,
  mask) on five fixed boxes per image pooled from every level its RoI
  extractor reads (:func:`~.detection_rules.fixed_roi_align`), through the
  shared head when the detector has one.

mmdet's ``SingleRoIExtractor`` allocates its output with its
``out_channels`` attribute: the view's pooling records that attribute as a
size site (``channels_attr``), so that export writes the kept FPN width
into the exported detector's extractor (otherwise its ``predict`` would
fail on the first RoI).

Nothing here imports mmdet unless it is already imported:
:func:`~.detection_rules.traceable_view` calls :func:`register_mmdet_views`
only when ``mmdet`` is in ``sys.modules``.
"""
from __future__ import annotations

import functools

import torch
from torch import nn

from .detection_rules import (
    TraceableView,
    fixed_roi_align,
    register_traceable_view,
)

__all__ = ['MMDetSingleStageView', 'MMDetTwoStageView',
           'register_mmdet_views']

# FX records wrapped functions per module namespace: one node here too
torch.fx.wrap('fixed_roi_align')


class _MMDetView(TraceableView):
    """The detector's ``backbone`` (and ``neck``); :meth:`features` runs
    them as mmdet's ``extract_feat`` does."""

    def __init__(self, det: nn.Module):
        super().__init__()
        self.attach(det, 'backbone')
        self.with_neck = getattr(det, 'with_neck', False)
        if self.with_neck:
            self.attach(det, 'neck')

    def features(self, images: torch.Tensor):
        x = self.backbone(images)
        return self.neck(x) if self.with_neck else x


class MMDetSingleStageView(_MMDetView):
    """``bbox_head(neck(backbone(images)))`` of an mmdet one-stage
    detector: the head's outputs as its ``forward`` returns them (tuples of
    per-level lists), before decoding."""

    def __init__(self, det: nn.Module):
        super().__init__(det)
        self.attach(det, 'bbox_head')

    def forward(self, images: torch.Tensor):
        return self.bbox_head(self.features(images))


def _roi_branches(det: nn.Module) -> list[tuple[str, str]]:
    """``(extractor, head)`` names of the RoI branches ``det`` has."""
    roi = det.roi_head
    found = []
    for kind in ('bbox', 'mask'):
        if not getattr(roi, f'with_{kind}', False):
            continue
        head = f'{kind}_head'
        extractor = f'{kind}_roi_extractor'
        if kind == 'mask' and getattr(roi, 'share_roi_extractor', False):
            extractor = 'bbox_roi_extractor'
        ext = getattr(roi, extractor)
        if not all(hasattr(ext, a) for a in ('roi_layers', 'featmap_strides',
                                             'out_channels')):
            raise ValueError(
                f'roi_head.{extractor}: {type(ext).__name__} is not a '
                'single-level RoI extractor (roi_layers, featmap_strides, '
                'out_channels); register a traceable view for '
                f'{type(det).__name__}')
        found.append((extractor, head))
    return found


class MMDetTwoStageView(_MMDetView):
    """An mmdet two-stage detector's network: the RPN head on every level,
    then each RoI branch on fixed RoIs.

    Returns:
        ``(rpn outputs, *branch outputs)``: the RPN head's tuple of
        per-level lists, then each branch head's output.
    """

    def __init__(self, det: nn.Module):
        super().__init__(det)
        if not getattr(det, 'with_rpn', False):
            raise ValueError(f'{type(det).__name__} has no rpn_head: '
                             'register a traceable view for it')
        self.attach(det, 'rpn_head')
        roi = det.roi_head
        self.with_shared_head = getattr(roi, 'with_shared_head', False)
        if self.with_shared_head:
            self.attach(det, 'roi_head.shared_head')
        self.branches: list[tuple[str, int, tuple[int, int], int, str]] = []
        for extractor, head in _roi_branches(det):
            ext = getattr(roi, extractor)
            layer = ext.roi_layers[0]
            self.attach(det, f'roi_head.{head}')
            self.branches.append((
                head, len(ext.featmap_strides),
                tuple(int(s) for s in layer.output_size),
                int(getattr(layer, 'sampling_ratio', 0)),
                f'roi_head.{extractor}:out_channels'))

    def forward(self, images: torch.Tensor):
        x = self.features(images)
        outs = [self.rpn_head(x)]
        for head, levels, size, ratio, attr in self.branches:
            pooled = torch.cat([fixed_roi_align(x[i], size, ratio, attr)
                                for i in range(levels)], 0)
            if self.with_shared_head:
                pooled = self.roi_head.shared_head(pooled)
            outs.append(getattr(self.roi_head, head)(pooled))
        return tuple(outs)


@functools.cache
def register_mmdet_views() -> bool:
    """Register the views above for mmdet's detector base classes (once;
    ``False`` when mmdet cannot be imported)."""
    try:
        from mmdet.models.detectors.single_stage import SingleStageDetector
        from mmdet.models.detectors.two_stage import TwoStageDetector
    except ImportError:
        return False
    register_traceable_view(SingleStageDetector, MMDetSingleStageView)
    register_traceable_view(TwoStageDetector, MMDetTwoStageView)
    return True
