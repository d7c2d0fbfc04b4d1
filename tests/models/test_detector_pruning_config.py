"""configs/pruning/l1_retinanet-r18-fpn_1xb2_coco.py: the one-shot pruning
algorithm it builds prunes the wrapped RetinaNet to its MACs target, trains
in masked mode on synthetic COCO-format data and exports an equivalent
detector. (tools/train.py itself needs PruningHook to tolerate configs
without a validation loop, which detector configs have; see the report of
issue 16.)"""
import os

import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate

from helpers import ROOT
from helpers.data import make_coco

CONFIG = os.path.join(ROOT, 'configs', 'pruning',
                      'l1_retinanet-r18-fpn_1xb2_coco.py')


def test_l1_retinanet_config_prunes_trains_and_exports(tmp_path):
    from mmrazor_ext.datasets import CocoDetectionTV
    from mmrazor_ext.registry import MODELS, register_all_modules
    register_all_modules(init_default_scope=True)
    cfg = Config.fromfile(CONFIG)
    assert cfg.model.type == 'OneShotPruning'
    assert cfg.model.target == dict(mode='flops', ratio=0.5, sampling='global')
    assert cfg.custom_hooks[0]['type'] == 'PruningHook'
    cfg.model.architecture.update(num_classes=3, min_size=64, max_size=64)
    cfg.model.input_shape = (1, 3, 64, 64)
    torch.manual_seed(0)
    algo = MODELS.build(cfg.model)

    data = make_coco(str(tmp_path / 'coco'))
    dataset = CocoDetectionTV(data, 'annotations/train.json', 'images')
    batch = pseudo_collate([dataset[0], dataset[1]])
    algo.prune([batch])  # L1: weights only, no batch is read
    pruner = algo.pruner
    ratio = pruner.estimate_flops() / pruner.original_flops
    assert abs(ratio - 0.5) <= 0.02
    # FPN outputs and the head towers' inputs are one space; outputs kept
    out = next(n for n, s in pruner.channel_spaces.items()
               if ('detector.backbone.fpn.layer_blocks.0.0', 'out')
               in s.members)
    assert ('detector.head.classification_head.conv.0.0', 'in') in \
        pruner.channel_spaces[out].members
    assert not any(('detector.head.classification_head.cls_logits', 'out')
                   in s.members for s in pruner.channel_spaces.values())

    # one masked-mode training step on the synthetic boxes
    algo.train()
    data_in = algo.data_preprocessor(batch, True)
    losses = algo(data_in['inputs'], data_in['data_samples'], 'loss')
    loss = sum(v for k, v in losses.items() if 'loss' in k)
    assert torch.isfinite(loss)
    loss.backward()

    small = algo.export_model()
    assert algo.export_check(small)['ok']
    det, small_det = algo.architecture.detector, small.detector
    # one global threshold: some spaces shrink, the outputs keep theirs
    assert sum(p.numel() for p in small_det.parameters()) < \
        0.6 * sum(p.numel() for p in det.parameters())
    assert small_det.head.classification_head.cls_logits.out_channels == \
        det.head.classification_head.cls_logits.out_channels
    algo.eval()
    small.eval()
    imgs = [dataset[0]['inputs'].float() / 255]
    with torch.no_grad():
        ref, got = det(imgs), small_det(imgs)
    assert ref[0]['boxes'].shape == got[0]['boxes'].shape
    torch.testing.assert_close(got[0]['scores'], ref[0]['scores'],
                               rtol=1e-4, atol=1e-5)
