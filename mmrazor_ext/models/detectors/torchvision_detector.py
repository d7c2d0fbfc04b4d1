"""torchvision RetinaNet / Faster R-CNN as an mmengine model.

mmdet needs mmcv's compiled ops (see setup.cfg, extra ``det``); this wrapper
lets detection configs run with mmengine's Runner (and so with
``SparsityHook``) on torchvision's detectors instead. Its ``mode='tensor'``
path is the network only (backbone + FPN + heads, no anchors or
post-processing), which is what the tracer sees, as MSBench requires
("FX should only trace the network").
"""
from typing import Any

import torch
from mmengine.model import BaseModel
from torchvision.models.detection import FasterRCNN, RetinaNet
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from mmrazor_ext.graph import traceable_view
from mmrazor_ext.registry import MODELS


@MODELS.register_module()
class TorchvisionDetector(BaseModel):
    """A randomly initialised torchvision detector with a ResNet-FPN backbone.

    Args:
        arch: ``'retinanet'`` or ``'faster_rcnn'``.
        backbone: torchvision ResNet name (``'resnet18'``, ``'resnet50'``).
        num_classes: Object classes (background excluded).
        min_size: Shorter image side after torchvision's resize.
        max_size: Longer side limit.
        trainable_layers: ResNet stages to train (5 = all).
        data_preprocessor: mmengine data preprocessor config.

    Inputs follow torchvision: ``inputs`` is a list of ``(3, H, W)`` images
    in [0, 1]; ``data_samples`` a list of dicts with ``boxes`` (x1, y1, x2,
    y2) and ``labels`` (1-based; 0 is background for Faster R-CNN).
    """

    def __init__(self, arch: str = 'retinanet', backbone: str = 'resnet18',
                 num_classes: int = 80, min_size: int = 800,
                 max_size: int = 1333, trainable_layers: int = 5,
                 data_preprocessor: Any = None):
        super().__init__(data_preprocessor=data_preprocessor)
        if arch == 'retinanet':
            body = resnet_fpn_backbone(
                backbone_name=backbone, weights=None,
                trainable_layers=trainable_layers, returned_layers=[2, 3, 4],
                extra_blocks=LastLevelP6P7(256, 256))
            self.detector = RetinaNet(body, num_classes=num_classes + 1,
                                      min_size=min_size, max_size=max_size)
        elif arch == 'faster_rcnn':
            body = resnet_fpn_backbone(backbone_name=backbone, weights=None,
                                       trainable_layers=trainable_layers)
            self.detector = FasterRCNN(body, num_classes=num_classes + 1,
                                       min_size=min_size, max_size=max_size)
        else:
            raise ValueError(f'arch must be retinanet or faster_rcnn, got {arch!r}')
        self.arch = arch

    def _images(self, inputs):
        if isinstance(inputs, torch.Tensor) and inputs.dim() == 4:
            inputs = list(inputs)
        return [x.float() / 255 if x.dtype == torch.uint8 else x for x in inputs]

    def forward(self, inputs, data_samples=None, mode: str = 'tensor'):
        if mode == 'tensor':
            return self._network(inputs)
        images = self._images(inputs)
        if isinstance(data_samples, dict):
            # mmengine's pseudo_collate turns a list of dicts into a dict of
            # lists; go back to torchvision's list of per-image targets.
            data_samples = [dict(zip(data_samples, v))
                            for v in zip(*data_samples.values())]
        if mode == 'loss':
            targets = [{'boxes': s['boxes'].float(), 'labels': s['labels'].long()}
                       for s in data_samples]
            losses = self.detector(images, targets)
            # mmengine sums the entries whose key contains "loss".
            return {k if k.startswith('loss') else f'loss_{k}': v
                    for k, v in losses.items()}
        if mode == 'predict':
            return self.detector(images)
        raise ValueError(f'unknown mode {mode!r}')

    def _network(self, x: torch.Tensor):
        """Backbone + FPN + heads on a batched tensor (traceable): the
        detector's traceable view. For Faster R-CNN that is the RPN head and
        the box head on fixed RoIs, so the box head's inputs follow pruned
        FPN channels (see :mod:`mmrazor_ext.graph.detection_rules`)."""
        # .forward: the view is no registered submodule; its modules are
        # the detector's, traced under their names here (detector.*)
        return traceable_view(self.detector).forward(x)
