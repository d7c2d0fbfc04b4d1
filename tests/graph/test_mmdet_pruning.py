"""Channel pruning of mmdet detectors (the ``[det]`` extra, ``make det``):
RetinaNet and Faster R-CNN with small random-init ResNet-18 / FPN backbones
prune through their traceable views (:mod:`mmrazor_ext.graph.mmdet_views`),
share the FPN / head spaces, and the exported detector's ``predict``
(anchors, decoding, NMS; RoI pooling of real proposals for Faster R-CNN)
gives the masked detector's boxes, scores and labels.

Skipped where mmdet or mmcv's compiled ops are missing (``make det`` builds
them; the default ``make setup`` installs mmcv-lite only)."""
import pytest
import torch
from mmengine.config import ConfigDict
from torch import nn

mmdet = pytest.importorskip('mmdet')
try:
    from mmcv.ops import RoIAlign, batched_nms  # noqa: F401 compiled ops
except (ImportError, OSError) as e:  # mmcv-lite: no _ext
    pytest.skip(f'mmcv compiled ops missing ({e}); run make det',
                allow_module_level=True)

from mmdet.registry import MODELS  # noqa: E402
from mmdet.structures import DetDataSample  # noqa: E402
from mmdet.utils import register_all_modules  # noqa: E402

from mmrazor_ext.graph import traceable_view  # noqa: E402
from mmrazor_ext.graph.mmdet_views import (  # noqa: E402
    MMDetSingleStageView,
    MMDetTwoStageView,
)
from mmrazor_ext.pruners import ChannelPruner  # noqa: E402
from mmrazor_ext.utils import perturb_parameters  # noqa: E402

register_all_modules(init_default_scope=False)

FPN = 32
H, W = 128, 160
PRE = dict(type='DetDataPreprocessor', mean=[123.675, 116.28, 103.53],
           std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_size_divisor=32)
BACKBONE = dict(type='ResNet', depth=18, num_stages=4, out_indices=(0, 1, 2, 3),
                frozen_stages=-1, norm_cfg=dict(type='BN', requires_grad=True),
                norm_eval=False, style='pytorch', init_cfg=None)
CODER = dict(type='DeltaXYWHBBoxCoder', target_means=[0.] * 4,
             target_stds=[1.] * 4)


def retinanet():
    return dict(
        type='RetinaNet', data_preprocessor=PRE, backbone=BACKBONE,
        neck=dict(type='FPN', in_channels=[64, 128, 256, 512],
                  out_channels=FPN, start_level=1, add_extra_convs='on_input',
                  num_outs=5),
        bbox_head=dict(
            type='RetinaHead', num_classes=4, in_channels=FPN,
            stacked_convs=2, feat_channels=FPN,
            anchor_generator=dict(type='AnchorGenerator', octave_base_scale=4,
                                  scales_per_octave=3, ratios=[0.5, 1., 2.],
                                  strides=[8, 16, 32, 64, 128]),
            bbox_coder=CODER,
            loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0,
                          alpha=0.25, loss_weight=1.0),
            loss_bbox=dict(type='L1Loss', loss_weight=1.0)),
        test_cfg=dict(nms_pre=200, min_bbox_size=0, score_thr=0.0,
                      nms=dict(type='nms', iou_threshold=0.5), max_per_img=8))


def faster_rcnn():
    return dict(
        type='FasterRCNN', data_preprocessor=PRE, backbone=BACKBONE,
        neck=dict(type='FPN', in_channels=[64, 128, 256, 512],
                  out_channels=FPN, num_outs=5),
        rpn_head=dict(
            type='RPNHead', in_channels=FPN, feat_channels=FPN,
            anchor_generator=dict(type='AnchorGenerator', scales=[8],
                                  ratios=[0.5, 1., 2.],
                                  strides=[4, 8, 16, 32, 64]),
            bbox_coder=CODER,
            loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=True,
                          loss_weight=1.0),
            loss_bbox=dict(type='L1Loss', loss_weight=1.0)),
        roi_head=dict(
            type='StandardRoIHead',
            bbox_roi_extractor=dict(
                type='SingleRoIExtractor',
                roi_layer=dict(type='RoIAlign', output_size=7,
                               sampling_ratio=0),
                out_channels=FPN, featmap_strides=[4, 8, 16, 32]),
            bbox_head=dict(
                type='Shared2FCBBoxHead', in_channels=FPN,
                fc_out_channels=64, roi_feat_size=7, num_classes=4,
                bbox_coder=dict(type='DeltaXYWHBBoxCoder',
                                target_means=[0.] * 4,
                                target_stds=[0.1, 0.1, 0.2, 0.2]),
                reg_class_agnostic=False,
                loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False,
                              loss_weight=1.0),
                loss_bbox=dict(type='L1Loss', loss_weight=1.0))),
        train_cfg=None,
        test_cfg=dict(
            rpn=dict(nms_pre=200, max_per_img=30,
                     nms=dict(type='nms', iou_threshold=0.7),
                     min_bbox_size=0),
            rcnn=dict(score_thr=0.0, nms=dict(type='nms', iou_threshold=0.5),
                      max_per_img=8)))


def build(cfg):
    torch.manual_seed(0)
    det = MODELS.build(ConfigDict(cfg, _scope_='mmdet'))
    # random BN statistics and weights spread past the heads' tiny init:
    # distinct scores, and a wrong channel slice cannot hide behind
    # defaults (all-ones BN, zero-mean heads)
    g = torch.Generator().manual_seed(1)
    for m in det.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * .1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + .5)
    for name, m in det.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and 'head' in name:
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) *
                               (2.0 / m.weight[0].numel()) ** 0.5)
    perturb_parameters(det, scale=0.01, seed=2)
    return det.eval()


def batch(det):
    g = torch.Generator().manual_seed(3)
    imgs = [torch.randint(0, 256, (3, H, W), generator=g, dtype=torch.uint8)
            for _ in range(2)]
    samples = []
    for _ in imgs:
        s = DetDataSample()
        s.set_metainfo(dict(img_shape=(H, W), ori_shape=(H, W),
                            scale_factor=(1., 1.)))
        samples.append(s)
    data = det.data_preprocessor(dict(inputs=imgs, data_samples=samples),
                                 False)
    return data['inputs'], data['data_samples']


def predict(det, inputs, samples):
    with torch.no_grad():
        out = det.predict(inputs, [s.clone() for s in samples], rescale=False)
    return [(o.pred_instances.bboxes, o.pred_instances.scores,
             o.pred_instances.labels) for o in out]


def assert_same_detections(ref, out):
    assert len(ref) == len(out)
    for (b0, s0, l0), (b1, s1, l1) in zip(ref, out):
        assert b0.shape == b1.shape and len(b0) > 0
        torch.testing.assert_close(s1, s0, rtol=1e-4, atol=1e-5)
        assert torch.equal(l1, l0)
        torch.testing.assert_close(b1, b0, rtol=1e-4, atol=1e-2)


def space_of(pruner, layer, role='out'):
    return next((n for n, s in pruner.channel_spaces.items()
                 if (layer, role) in s.members), None)


def prune(det):
    pruner = ChannelPruner(det, torch.rand(1, 3, H, W))
    subnet = pruner.sample_subnet_uniform(0.5, pruner.get_metric_local('l1'))
    assert pruner.estimate_flops(subnet) <= 0.75 * pruner.original_flops
    pruner.set_subnet(subnet)
    return pruner


def prune_sharing(det, view_cls, shared, fixed):
    """Prune ``det`` (built, checked to get ``view_cls``): the FPN outputs
    and the ``shared`` (layer, role) pairs are one space, ``fixed`` layers
    keep their outputs. Returns (pruner, masked predictions, batch)."""
    assert isinstance(traceable_view(det), view_cls)
    pruner = prune(det)
    fpn_out = space_of(pruner, 'neck.fpn_convs.0.conv')
    assert fpn_out is not None
    assert all(space_of(pruner, *lr) == fpn_out for lr in shared), shared
    assert all(space_of(pruner, n) is None for n in fixed), fixed
    inputs, samples = batch(det)
    return pruner, predict(det, inputs, samples), (inputs, samples)


def test_retinanet_prunes_and_exports_equal_detections():
    det = build(retinanet())
    # FPN outputs, the extra P6 / P7 convs and the level-shared head towers
    # are one space; the head's class / box convs keep their outputs
    pruner, ref, (inputs, samples) = prune_sharing(
        det, MMDetSingleStageView,
        [('neck.fpn_convs.4.conv', 'out'), ('bbox_head.cls_convs.0.conv', 'in'),
         ('bbox_head.reg_convs.0.conv', 'in')],
        ['bbox_head.retina_cls', 'bbox_head.retina_reg'])
    small = pruner.export()
    assert pruner.last_export_report['ok']
    assert small.bbox_head.retina_cls.out_channels == 9 * 4
    assert small.neck.fpn_convs[0].conv.out_channels < FPN
    assert_same_detections(ref, predict(small, inputs, samples))
    # raw head outputs keep their shapes
    with torch.no_grad():
        a, b = det._forward(inputs), small._forward(inputs)
    for la, lb in zip(a, b):
        assert [t.shape for t in la] == [t.shape for t in lb]


def test_faster_rcnn_prunes_and_exports_equal_detections():
    det = build(faster_rcnn())
    pruner, ref, (inputs, samples) = prune_sharing(
        det, MMDetTwoStageView,
        [('rpn_head.rpn_conv', 'in'), ('roi_head.bbox_head.shared_fcs.0', 'in')],
        ['roi_head.bbox_head.fc_cls', 'roi_head.bbox_head.fc_reg',
         'rpn_head.rpn_cls'])
    small = pruner.export()
    assert pruner.last_export_report['ok']
    kept = small.neck.fpn_convs[0].conv.out_channels
    assert kept < FPN
    # the RoI extractor allocates its output with out_channels: export
    # writes the kept width there (the original keeps its own)
    assert small.roi_head.bbox_roi_extractor.out_channels == kept
    assert det.roi_head.bbox_roi_extractor.out_channels == FPN
    assert small.roi_head.bbox_head.shared_fcs[0].in_features == kept * 49
    assert_same_detections(ref, predict(small, inputs, samples))


def test_retinanet_sparsifies_2of4_through_the_same_view():
    """Sparse training's tracer reaches the mmdet network too: 2:4 masks on
    backbone, FPN and head convs; the stem and the logits (no 2:4 layout)
    stay dense and are named; ``predict`` runs on the sparse weights."""
    from mmrazor_ext.sparsity import build_sparse_scheduler
    det = build(retinanet())
    sch = build_sparse_scheduler(dict(scheduler=dict(
        type='AmpereScheduler',
        kwargs=dict(mask_calculator='m4n2_1d', allow_recompute_mask=False,
                    allow_permutation=False, verbosity=1))))
    det = sch.prepare_sparse_model(det, example_inputs=torch.rand(1, 3, H, W))
    names = set(sch.layers)
    for prefix in ('backbone.layer', 'neck.fpn_convs.', 'neck.lateral_convs.',
                   'bbox_head.cls_convs.'):
        assert any(n.startswith(prefix) for n in names), prefix
    assert {'backbone.conv1', 'bbox_head.retina_cls'} <= set(sch.skipped)
    w = det.get_submodule('bbox_head.cls_convs.0.conv').weight
    kept = (w.detach().permute(0, 2, 3, 1).reshape(-1, 4) != 0).sum(1)
    assert bool((kept <= 2).all())
    inputs, samples = batch(det)
    assert all(len(b) > 0 for b, _, _ in predict(det, inputs, samples))
