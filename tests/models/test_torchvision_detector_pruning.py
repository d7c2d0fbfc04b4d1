"""TorchvisionDetector (the mmengine wrapper the detection configs use):
its tensor path is the detector's traceable view, so pruning Faster R-CNN
through it also slices the box head that reads the pruned FPN channels and
the exported detector predicts what the masked one does."""
import torch

from mmrazor_ext.models import TorchvisionDetector
from mmrazor_ext.pruners import ChannelPruner


def test_faster_rcnn_wrapper_prunes_box_head_with_fpn():
    torch.manual_seed(0)
    model = TorchvisionDetector('faster_rcnn', 'resnet18', num_classes=3,
                                min_size=64, max_size=64).eval()
    det = model.detector
    det.roi_heads.score_thresh = 0.0
    det.roi_heads.detections_per_img = 5
    pruner = ChannelPruner(model, torch.rand(1, 3, 64, 64), divisor=1)
    fpn = next(s for s in pruner.channel_spaces.values()
               if ('detector.backbone.fpn.layer_blocks.0.0', 'out')
               in s.members)
    assert ('detector.roi_heads.box_head.fc6', 'in') in fpn.members
    pruner.set_subnet(pruner.sample_subnet_uniform(0.5))
    imgs = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(1))]
    with torch.no_grad():
        ref = model(imgs, mode='predict')
    small = pruner.export().eval()
    kept = small.detector.backbone.fpn.layer_blocks[0][0].out_channels
    assert kept == 128
    assert small.detector.roi_heads.box_head.fc6.in_features == kept * 7 * 7
    with torch.no_grad():
        out = small(imgs, mode='predict')
    assert ref[0]['boxes'].shape == out[0]['boxes'].shape == (5, 4)
    torch.testing.assert_close(out[0]['scores'], ref[0]['scores'],
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out[0]['boxes'], ref[0]['boxes'],
                               rtol=1e-4, atol=1e-2)
