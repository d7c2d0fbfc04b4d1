"""An mmdet user's own config through ``tools/train.py`` (the ``[det]``
extra, ``make det``): mmdet's shipped ``retinanet_r18_fpn_1x_coco.py``,
inherited as ``mmdet::...`` and changed only for the synthetic data,
trains two iterations under the 2:4 ``SparsityHook``, and, wrapped in
``OneShotPruning`` with ``architecture={{_base_.model}}``, prunes to half
its MACs, fine-tunes masked and exports a detector that rebuilds from
``pruned_model.pth``. Skipped without mmdet and mmcv's compiled ops."""
import json
import os

import pytest
import torch

pytest.importorskip('mmdet')
try:
    from mmcv.ops import batched_nms  # noqa: F401 compiled ops
except (ImportError, OSError) as e:  # mmcv-lite: no _ext
    pytest.skip(f'mmcv compiled ops missing ({e}); run make det',
                allow_module_level=True)

from helpers import PY, ROOT, run_tool  # noqa: E402
from helpers.data import make_coco  # noqa: E402
from helpers.sparsity import masks  # noqa: E402
from mmrazor_ext.engine import safe_load  # noqa: E402

TRAIN = [PY, os.path.join(ROOT, 'tools', 'train.py')]

# the user's detector config: mmdet's own, plus what any new dataset needs
USER_CONFIG = """
_base_ = 'mmdet::retinanet/retinanet_r18_fpn_1x_coco.py'
metainfo = dict(classes=('cat', 'dog', 'car'))
model = dict(_scope_='mmdet', backbone=dict(init_cfg=None),
             bbox_head=dict(num_classes=3))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=(64, 64), keep_ratio=True),
    dict(type='PackDetInputs')]
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root={data!r}, metainfo=metainfo,
                                     ann_file='annotations/train.json',
                                     data_prefix=dict(img='images/'),
                                     pipeline=train_pipeline))
val_dataloader = None
val_cfg = None
val_evaluator = None
test_dataloader = None
test_cfg = None
test_evaluator = None
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=2)
param_scheduler = dict(_delete_=True, type='ConstantLR', factor=1.0,
                       by_epoch=False)
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=2),
                     logger=dict(interval=1))
"""


@pytest.fixture(scope='module')
def user_config(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('mmdet_cfg')
    data = make_coco(str(tmp / 'coco'), n=4, size=64) + os.sep
    path = tmp / 'retinanet_user.py'
    path.write_text(USER_CONFIG.format(data=data))
    return path


@pytest.mark.slow
def test_mmdet_config_trains_under_the_sparsity_hook(user_config, tmp_path):
    cfg = tmp_path / 'sparse.py'
    cfg.write_text(f"""
_base_ = [{str(user_config)!r}]
custom_hooks = [dict(type='mmrazor_ext.SparsityHook', sparsity_config=dict(
    scheduler=dict(type='AmpereScheduler', kwargs=dict(
        mask_calculator='m4n2_1d', allow_recompute_mask=False,
        allow_permutation=False, verbosity=1))))]
""")
    work = tmp_path / 'work'
    proc = run_tool(TRAIN + [str(cfg), '--work-dir', str(work)])
    log = proc.stdout + proc.stderr
    assert 'AmpereScheduler: 2:4 on 35 layer(s)' in log
    state = safe_load(str(work / 'iter_2.pth'))['state_dict']
    m = masks(state)
    for prefix in ('backbone.layer', 'neck.fpn_convs.', 'bbox_head.cls_convs.'):
        assert any(k.startswith(prefix) for k in m), prefix
    for key, mask in m.items():
        groups = mask.permute(0, 2, 3, 1).reshape(-1, 4)
        assert bool((groups.sum(1) == 2).all()), key


@pytest.mark.slow
def test_mmdet_config_prunes_one_shot_and_exports(user_config, tmp_path):
    cfg = tmp_path / 'prune.py'
    cfg.write_text(f"""
_base_ = [{str(user_config)!r}]
model = dict(_delete_=True, type='mmrazor_ext.OneShotPruning',
             architecture={{{{_base_.model}}}},
             input_shape=(1, 3, 128, 128), metric='l1',
             target=dict(mode='flops', ratio=0.5, sampling='global'))
custom_hooks = [dict(type='mmrazor_ext.PruningHook')]
""")
    work = tmp_path / 'work'
    proc = run_tool(TRAIN + [str(cfg), '--work-dir', str(work)])
    assert 'pruning step 1: metric l1' in proc.stdout + proc.stderr
    report = json.loads((work / 'report.json').read_text())
    assert 0.45 <= report['flops_ratio'] <= 0.55
    assert report['export_check']['ok']
    assert report['params_after'] < 0.5 * report['params_before']
    # the exported detector rebuilds from a fresh mmdet model and runs
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    from mmrazor_ext.algorithms import load_pruned_model
    register_all_modules(init_default_scope=False)
    det = MODELS.build(Config.fromfile(str(user_config)).model).eval()
    small = load_pruned_model(det, str(work / 'subnet.json')).eval()
    assert sum(p.numel() for p in small.parameters()) == \
        report['params_after']
    with torch.no_grad():
        cls, reg = small._forward(torch.rand(1, 3, 64, 64))
    assert [c.shape[1] for c in cls] == [9 * 3] * 5
