"""Channel pruning of torchvision detectors through their traceable views:
RetinaNet, FCOS and Faster R-CNN (small random-init ResNet-FPN backbones
with FrozenBatchNorm2d, as torchvision builds them) prune to <= 0.8 of the
network's MACs, share the FPN / head channel spaces, keep the head outputs,
and the exported detector's full forward (resize, anchors, NMS) gives the
masked detector's boxes, scores and labels."""
import pytest
import torch
from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import (
    FastRCNNPredictor,
    TwoMLPHead,
)
from torchvision.models.resnet import BasicBlock, ResNet
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

from mmrazor_ext.graph import (
    TraceableView,
    register_traceable_view,
    traceable_view,
)
from mmrazor_ext.pruners import ChannelPruner, load_subnet

FPN = 32  # FPN / head width: small and fast, still divisible by 8 and 16
H, W = 128, 160


def _body():
    """ResNet with one block per stage and random FrozenBatchNorm2d
    statistics (all-ones defaults would hide a wrong channel slice)."""
    body = ResNet(BasicBlock, [1, 1, 1, 1], norm_layer=FrozenBatchNorm2d)
    g = torch.Generator().manual_seed(1)
    for m in body.modules():
        if isinstance(m, FrozenBatchNorm2d):
            n = m.weight.numel()
            m.weight.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return body


def _spread_heads(det):
    """torchvision's head init (std 0.01, prior bias) makes every score
    nearly equal, so the top-k order would hang on rounding; wider weights
    give distinct scores. Keep every score and a few boxes per image."""
    g = torch.Generator().manual_seed(2)
    for name, m in det.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and \
                name.startswith(('head.', 'rpn.', 'roi_heads.')):
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) *
                               (2.0 / m.weight[0].numel()) ** 0.5)
    for obj in (det, getattr(det, 'roi_heads', None)):
        if obj is not None and hasattr(obj, 'score_thresh'):
            obj.score_thresh = 0.0
            obj.detections_per_img = 8
    return det.eval()


def one_stage(cls):
    torch.manual_seed(0)
    backbone = BackboneWithFPN(
        _body(), {'layer2': '0', 'layer3': '1', 'layer4': '2'},
        [128, 256, 512], FPN, extra_blocks=LastLevelP6P7(FPN, FPN))
    return _spread_heads(cls(backbone, num_classes=4, min_size=H,
                             max_size=W))


def faster_rcnn():
    torch.manual_seed(0)
    backbone = BackboneWithFPN(
        _body(), {'layer1': '0', 'layer2': '1', 'layer3': '2',
                  'layer4': '3'}, [64, 128, 256, 512], FPN)
    det = FasterRCNN(backbone, min_size=H, max_size=W,
                     box_head=TwoMLPHead(FPN * 7 * 7, 64),
                     box_predictor=FastRCNNPredictor(64, 5),
                     rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=20)
    return _spread_heads(det)


def images():
    g = torch.Generator().manual_seed(3)
    return [torch.rand(3, H, W, generator=g), torch.rand(3, 112, 150,
                                                          generator=g)]


def space_of(pruner, layer, role='out'):
    """Name of the space holding ``layer``'s ``role`` channels (or None)."""
    return next((n for n, s in pruner.channel_spaces.items()
                 if (layer, role) in s.members), None)


def assert_same_detections(ref, out):
    assert len(ref) == len(out)
    for a, b in zip(ref, out):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].shape == b[k].shape, k
        torch.testing.assert_close(b['scores'], a['scores'], rtol=1e-4,
                                   atol=1e-5)
        assert torch.equal(b['labels'], a['labels'])
        torch.testing.assert_close(b['boxes'], a['boxes'], rtol=1e-4,
                                   atol=1e-2)


def prune_and_export(det, ratio=0.5):
    """Prune ``ratio`` of every space (L1), then return (pruner, masked
    detections, exported detector)."""
    pruner = ChannelPruner(det, torch.rand(1, 3, H, W), divisor=1)
    subnet = pruner.sample_subnet_uniform(ratio, pruner.get_metric_local('l1'))
    assert pruner.estimate_flops(subnet) <= 0.8 * pruner.original_flops
    pruner.set_subnet(subnet)
    with torch.no_grad():
        ref = det(images())
    small = pruner.export()
    assert pruner.last_export_report['ok']
    with torch.no_grad():
        out = small.eval()(images())
    assert_same_detections(ref, out)
    # the network outputs (raw head tensors, via the view) agree too
    x = torch.rand(2, 3, H, W)
    with torch.no_grad():
        torch.testing.assert_close(traceable_view(small)(x),
                                   traceable_view(det)(x), rtol=1e-4,
                                   atol=1e-4)
    return pruner, ref, small


def test_retinanet_fpn_spaces_and_equivalent_export(tmp_path):
    det = one_stage(RetinaNet)
    pruner, ref, small = prune_and_export(det)
    # one space for every FPN output, P6 / P7 and both head towers' inputs
    # (the towers run on every level)
    out = space_of(pruner, 'backbone.fpn.layer_blocks.0.0')
    assert out is not None
    members = pruner.channel_spaces[out].members
    for m in [('backbone.fpn.layer_blocks.1.0', 'out'),
              ('backbone.fpn.layer_blocks.2.0', 'out'),
              ('backbone.fpn.extra_blocks.p6', 'out'),
              ('backbone.fpn.extra_blocks.p7', 'in'),
              ('backbone.fpn.extra_blocks.p7', 'out'),
              ('head.classification_head.conv.0.0', 'in'),
              ('head.regression_head.conv.0.0', 'in')]:
        assert m in members, m
    # the lateral convs share one space (top-down adds)
    lat = {space_of(pruner, f'backbone.fpn.inner_blocks.{i}.0')
           for i in range(3)}
    assert len(lat) == 1 and None not in lat and out not in lat
    # the head outputs keep their channels
    for name in ('head.classification_head.cls_logits',
                 'head.regression_head.bbox_reg'):
        assert space_of(pruner, name) is None
        assert small.get_submodule(name).out_channels == \
            det.get_submodule(name).out_channels
    assert small.backbone.fpn.layer_blocks[0][0].out_channels == FPN // 2
    assert small.head.classification_head.conv[0][0].in_channels == FPN // 2
    # save / load on a fresh detector of the same definition
    path = pruner.save_subnet(str(tmp_path / 'retina.json'))
    pruner.clear_subnet()
    loaded = load_subnet(one_stage(RetinaNet), path).eval()
    with torch.no_grad():
        assert_same_detections(ref, loaded(images()))


def test_fcos_group_norm_heads_export_equivalently():
    det = one_stage(FCOS)
    pruner, _, small = prune_and_export(det)
    # GroupNorm in the towers: whole groups are the units
    name = space_of(pruner, 'head.classification_head.conv.0')
    gn = det.head.classification_head.conv[1]
    assert isinstance(gn, nn.GroupNorm)
    assert pruner.channel_spaces[name].num_channels == gn.num_groups
    assert small.head.classification_head.conv[1].num_channels == \
        small.head.classification_head.conv[0].out_channels < FPN
    for name in ('head.classification_head.cls_logits',
                 'head.regression_head.bbox_reg',
                 'head.regression_head.bbox_ctrness'):
        assert space_of(pruner, name) is None


def test_faster_rcnn_rpn_and_box_head_prune_equivalently():
    det = faster_rcnn()
    pruner, _, small = prune_and_export(det)
    out = space_of(pruner, 'backbone.fpn.layer_blocks.0.0')
    members = pruner.channel_spaces[out].members
    # the RPN head runs on every level; the box head reads the pooled levels
    for m in [('backbone.fpn.layer_blocks.3.0', 'out'),
              ('rpn.head.conv.0.0', 'in'), ('roi_heads.box_head.fc6', 'in')]:
        assert m in members, m
    assert space_of(pruner, 'roi_heads.box_head.fc6') is not None
    for name in ('rpn.head.cls_logits', 'rpn.head.bbox_pred',
                 'roi_heads.box_predictor.cls_score',
                 'roi_heads.box_predictor.bbox_pred'):
        assert space_of(pruner, name) is None
    kept = small.backbone.fpn.layer_blocks[0][0].out_channels
    assert kept == FPN // 2
    # flatten -> fc6: the box head's inputs shrink by the 7x7 pooled cells
    assert small.roi_heads.box_head.fc6.in_features == kept * 7 * 7
    assert small.roi_heads.box_predictor.cls_score.out_features == 5
    # MACs targets: the estimate is what the exported detector's view counts
    pruner.clear_subnet()
    pruner.sample_subnet_for_flops(0.6, pruner.get_metric_local('l1'),
                                   mode='global')
    rep = pruner.last_flops_report
    assert rep['exported_flops'] == rep['estimated_flops']
    assert abs(rep['estimated_ratio'] - 0.6) <= 0.01


def test_registered_view_for_a_custom_detector():
    class Det(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU())
            self.cls = nn.Conv2d(16, 2, 1)

        def forward(self, images):  # python control flow on inputs
            outs = []
            for img in images:
                outs.append(self.cls(self.body(img[None])).amax().item())
            return outs

    class View(TraceableView):
        def __init__(self, det):
            super().__init__()
            self.attach(det, 'body')
            self.attach(det, 'cls')

        def forward(self, x):
            return self.cls(self.body(x))

    register_traceable_view(Det, View)
    det = Det()
    pruner = ChannelPruner(det, torch.rand(1, 3, 16, 16), divisor=1)
    assert list(pruner.channel_spaces) == ['body.0']
    pruner.set_subnet(pruner.sample_subnet_uniform(0.5))
    small = pruner.export()
    assert small.body[0].out_channels == 8 and small.cls.in_channels == 8
    assert isinstance(small, Det)


def test_view_must_cover_every_parameter():
    class Partial(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 1)
            self.b = nn.Conv2d(4, 4, 1)

    class View(TraceableView):
        def __init__(self, det):
            super().__init__()
            self.attach(det, 'a')

        def forward(self, x):
            return self.a(x)

    register_traceable_view(Partial, View)
    with pytest.raises(ValueError, match=r"leaves out parameters \['b.weight'"):
        ChannelPruner(Partial(), torch.rand(1, 3, 8, 8))
    with pytest.raises(TypeError, match='detector_class'):
        register_traceable_view('RetinaNet', View)
