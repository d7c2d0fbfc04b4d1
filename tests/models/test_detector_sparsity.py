"""The torchvision detectors under sparse training: the detector configs
(Ampere 2:4 RetinaNet, Amba Faster R-CNN, the Amba RetinaNet example)
run a few iterations through tools/train.py on synthetic COCO-format
data, and sparsify the traced network."""
import os
import re

import pytest
import torch

from helpers import PY, ROOT, run_tool
from helpers.data import make_coco
from helpers.sparsity import load, masks

TRAIN = [PY, os.path.join(ROOT, 'tools', 'train.py')]


def tiny_detector_config(tmp_path, name, data, model='', extra=''):
    """``configs/sparsity/<name>`` on ``data`` at 64 px for 2 iterations
    (``model``: more model overrides, ``extra``: more config lines)."""
    base = os.path.join(ROOT, 'configs', 'sparsity', name)
    cfg = tmp_path / f'tiny_{name}'
    cfg.write_text(f"""
_base_ = [{base!r}]
model = dict(num_classes=3, min_size=64, max_size=64{model})
train_dataloader = dict(num_workers=0, persistent_workers=False,
                        dataset=dict(data_root={data!r},
                                     ann_file='annotations/train.json',
                                     img_dir='images'))
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=2)
param_scheduler = dict(_delete_=True, type='ConstantLR', factor=1.0,
                       by_epoch=False)
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=2),
                     logger=dict(interval=1))
{extra}
""")
    return str(cfg)


@pytest.mark.slow
def test_ampere_retinanet_two_iterations(tmp_path):
    data = make_coco(str(tmp_path / 'coco'))
    cfg = tiny_detector_config(tmp_path, 'ampere_retinanet-r18-fpn_1xb2_coco.py',
                               data)
    work = tmp_path / 'work'
    proc = run_tool(TRAIN + [cfg, '--work-dir', str(work)])
    log = proc.stdout + proc.stderr
    assert re.search(r'\(train\).*\[2/2\].*loss_classification', log)
    assert 'AmpereScheduler: 2:4 on' in log
    state = torch.load(work / 'iter_2.pth', map_location='cpu',
                       weights_only=False)['state_dict']
    m = masks(state)
    for prefix in ('detector.backbone.body.', 'detector.backbone.fpn.',
                   'detector.head.regression_head.'):
        assert any(k.startswith(prefix) for k in m), prefix
    # Every mask keeps exactly 2 of each 4 consecutive input weights, and
    # the stored weights follow it after the optimizer steps.
    for key, mask in m.items():
        groups = mask.transpose(0, 1).reshape(-1, 4) if mask.dim() == 2 else \
            mask.permute(0, 2, 3, 1).reshape(-1, 4)
        assert (groups.sum(1) == 2).all(), key
        weight = state[key.replace('weight_fake_sparse.mask', 'weight')]
        assert not weight[~mask].any(), key
    # The 3-channel stem has no 2:4 layout: dense.
    assert 'detector.backbone.body.conv1.weight_fake_sparse.mask' not in m


@pytest.mark.slow
def test_amba_faster_rcnn_two_iterations(tmp_path):
    data = make_coco(str(tmp_path / 'coco'))
    cfg = tiny_detector_config(
        tmp_path, 'amba_faster-rcnn-r50-fpn_1xb2_coco.py', data,
        model=", backbone='resnet18'", extra="""
sparsity_config = dict(
    mask_generator=dict(type='NormalMaskGenerator'),
    fake_sparse=dict(type='FakeSparse'),
    scheduler=dict(type='AmbaLevelPruneScheduler', kwargs=dict(
        total_iters=None, sparsity_table=[50], do_sparse_analysis=True,
        default_input_shape=[1, 3, 64, 64], output_dir=None, save_dir=None)),
    leaf_module=['FrozenBatchNorm2d'])
custom_hooks = [dict(type='SparsityHook', sparsity_config=sparsity_config)]
""")
    work = tmp_path / 'work'
    proc = run_tool(TRAIN + [cfg, '--work-dir', str(work)])
    log = proc.stdout + proc.stderr
    assert re.search(r'\(train\).*\[2/2\].*loss_objectness', log)
    assert re.search(r'\(train\).*\[2/2\].*loss_classifier', log)
    ckpt = load(work / 'sparse_ckpts' / 'global_sparse_rate_50.pth.tar')
    assert abs(ckpt['global_sparsity'] - 0.5) <= 0.015
    m = masks(ckpt['state_dict'])
    for prefix in ('detector.backbone.body.', 'detector.backbone.fpn.',
                   'detector.rpn.head.'):
        assert any(k.startswith(prefix) for k in m), prefix
    zeros = sum(int((~v).sum()) for v in m.values())
    total = sum(v.numel() for v in m.values())
    assert abs(zeros / total - 0.5) <= 0.015
    assert (work / 'sparse_analysis' / 'desrie_prun_table.txt').exists()


@pytest.mark.slow
def test_detection_example_two_iterations(tmp_path):
    data = make_coco(str(tmp_path / 'coco'))
    cfg = tmp_path / 'det.py'
    base = os.path.join(ROOT, 'configs/sparsity/amba_retinanet-r18-fpn_1xb2_coco.py')
    cfg.write_text(f"""
_base_ = [{base!r}]
model = dict(num_classes=3, min_size=64, max_size=64)
train_dataloader = dict(num_workers=0, persistent_workers=False,
                        dataset=dict(data_root={data!r},
                                     ann_file='annotations/train.json',
                                     img_dir='images'))
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=2)
param_scheduler = dict(_delete_=True, type='ConstantLR', factor=1.0, by_epoch=False)
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=1000),
                     logger=dict(interval=1))
sparsity_config = dict(
    scheduler=dict(type='AmbaLevelPruneScheduler', kwargs=dict(
        sparsity_table=[50], default_input_shape=[1, 3, 64, 64],
        do_sparse_analysis=True)),
    leaf_module=['FrozenBatchNorm2d'])
custom_hooks = [dict(type='SparsityHook', sparsity_config=sparsity_config)]
""")
    work = tmp_path / 'work'
    proc = run_tool(TRAIN + [str(cfg), '--work-dir', str(work)])
    log = proc.stdout + proc.stderr
    assert re.search(r'\(train\).*\[2/2\].*loss_classification', log)
    ckpt = load(work / 'sparse_ckpts' / 'global_sparse_rate_50.pth.tar')
    assert abs(ckpt['global_sparsity'] - 0.5) <= 0.015
    m = masks(ckpt['state_dict'])
    prefixes = ('detector.backbone.body.', 'detector.backbone.fpn.',
                'detector.head.classification_head.', 'detector.head.regression_head.')
    for p in prefixes:  # backbone, FPN and both heads are sparsified
        assert any(k.startswith(p) for k in m), p
    # The stored weights times the masks are sparse; the model still trains.
    zeros = sum(int((~v).sum()) for v in m.values())
    total = sum(v.numel() for v in m.values())
    assert abs(zeros / total - 0.5) <= 0.015
