"""LayerFusion (layer pruning) as an algorithm: end to end through
tools/train.py, resume, export in the one saved format, ONNX, the
fusion plan, and unit tests of the algorithm (graph-level removal,
merging and folding: tests/graph/test_blocks.py, test_merge.py,
test_fold.py)."""
import json
import os

import pytest
import torch
from torch import nn

from helpers import BASELINE, PY, ROOT, load_tool, run_tool, tiny_cfg_options
from helpers.models import randomise

FUSION = os.path.join(ROOT,
                      'configs/fusion/fusion_resnet20_1xb128_fashionmnist.py')
X = torch.randn(1, 1, 28, 28)


# -- LayerFusion end to end ---------------------------------------------------------
@pytest.fixture(scope='module')
def trained(tiny_baseline):
    return tiny_baseline


def _fuse(work_dir, data_root, ckpt, epochs, extra=(), opts=()):
    return run_tool([
        PY, 'tools/train.py', FUSION, '--work-dir', str(work_dir), *extra,
        *tiny_cfg_options(data_root, max_epochs=epochs),
        f'model.init_checkpoint={ckpt}', 'model.metric_batches=2',
        'model.bn_recalib_batches=2', *opts])


@pytest.fixture(scope='module')
def fused(tmp_path_factory, tiny_fmnist, trained):
    """LayerFusion on ResNet-20 (2 blocks removed, the most linear remaining
    one merged whatever its error, BN folded in the export), "killed" after
    epoch 1 and resumed to epoch 2 (the merged conv's optimizer state must
    match on resume)."""
    wd = tmp_path_factory.mktemp('fusion')
    opts = ['model.fuse_bn=True', 'model.merging.linear_tol=1000.0',
            'model.merging.max_blocks=1', 'model.merging.batches=2']
    _fuse(wd, tiny_fmnist, trained, 1, opts=opts + ['param_scheduler.end=2'])
    proc = _fuse(wd, tiny_fmnist, trained, 2, extra=['--resume'], opts=opts)
    return wd, proc.stdout + proc.stderr


def test_layer_fusion_resume_restores_removed_blocks(fused):
    from mmrazor_ext.engine import safe_load
    wd, log = fused
    state = safe_load(str(wd / 'epoch_1.pth'))['state_dict']
    removed = state['_extra_state']['removed']
    merged = state['_extra_state']['merged']
    assert len(removed) == 2 and len(merged) == 1
    assert not set(merged) & set(removed)
    # the checkpoint holds the shallower model only
    assert not any(k.startswith(f'architecture.{removed[0]}.') for k in state)
    w = state[f'architecture.{merged[0]}.merged_conv.weight']
    assert w.shape[-2:] == (5, 5)
    assert not any(k.startswith(f'architecture.{merged[0]}.conv')
                   for k in state)
    assert 'resumed after pruning step 1' in log
    state2 = safe_load(str(wd / 'epoch_2.pth'))['state_dict']
    assert state2['_extra_state']['removed'] == removed
    assert state2['_extra_state']['merged'] == merged
    assert state2.keys() == state.keys()
    # the merged conv is in the optimizer: epoch 2 trained it
    assert not torch.equal(
        state2[f'architecture.{merged[0]}.merged_conv.weight'], w)
    report = json.loads((wd / 'report.json').read_text())
    assert report['removed_blocks'] == removed
    assert report['merged_blocks'] == merged


def test_layer_fusion_end_to_end(fused):
    """The files and numbers of the other algorithms."""
    from mmrazor_ext.algorithms import block_flops, load_fused_model
    from mmrazor_ext.estimators import get_model_complexity
    from mmrazor_ext.graph import find_blocks
    from mmrazor_ext.models import CifarResNet
    tmp_path, _ = fused
    report = json.loads((tmp_path / 'report.json').read_text())
    removed = report['removed_blocks']
    for f in ('pruned_model.pth', 'subnet.json', 'report.json'):
        assert (tmp_path / f).is_file(), f
    report = json.loads((tmp_path / 'report.json').read_text())
    assert report['metric'] == 'block_cka'
    assert len(removed) == 2 and set(removed) <= set(report['removable_blocks'])
    assert set(report['non_removable']) == {'backbone.layer2.0',
                                            'backbone.layer3.0'}
    scores = report['block_scores']
    kept = set(report['removable_blocks']) - set(removed)
    assert max(scores[n] for n in removed) <= min(scores[n] for n in kept)
    assert report['export_check']['ok']
    for key in ('top1_before', 'top1_step1_pruned',
                'top1_step1_bn_recalibrated', 'top1_after'):
        assert 0 <= report[key] <= 100
    # FLOPs drop by exactly the removed blocks' MACs, less the MACs the
    # merge adds (5x5 instead of two 3x3: 25 c^2 - 18 c^2 - BN per pixel)
    dense = CifarResNet(20, 10, 1)
    saved = block_flops(dense, find_blocks(dense, X), X)
    (merged,) = report['merged_blocks']
    c, hw = {'1': (16, 28 * 28), '2': (32, 14 * 14), '3': (64, 7 * 7)}[
        merged.split('.')[1][-1]]
    assert report['merge_flops_delta'][merged] == (25 - 18) * c * c * hw - \
        2 * c * hw
    assert set(report['merge_stats']) == set(report['removable_blocks'])
    assert report['flops_before'] - report['flops_after_depth'] == \
        sum(saved[n] for n in removed) - report['merge_flops_delta'][merged]
    # the export rebuilds from the original definition + subnet.json
    small = load_fused_model(dense, str(tmp_path / 'subnet.json'))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in small.modules())
    cx = get_model_complexity(small, X)
    assert cx['flops'] == report['flops_after']
    assert cx['params'] == report['params_after']


def test_onnx_export_round_trip(fused, tmp_path):
    pytest.importorskip('onnx')
    pytest.importorskip('onnxruntime')
    tool = load_tool('tools/deploy/export_onnx.py')
    wd, _ = fused
    out = str(tmp_path / 'fused.onnx')
    summary = tool.main([BASELINE, '--subnet', str(wd / 'subnet.json'),
                         '--out', out, '--atol', '1e-4'])
    assert summary['checked'] and summary['ok'], summary
    assert summary['max_abs_diff'] <= 1e-4
    import onnx
    ops = {n.op_type for n in onnx.load(out).graph.node}
    assert 'BatchNormalization' not in ops and 'Conv' in ops
    # 2 blocks removed (4 convs) and 1 merged (2 convs -> 1) from the 19
    # convs of ResNet-20 + 2 shortcuts
    convs = sum(n.op_type == 'Conv' for n in onnx.load(out).graph.node)
    assert convs == 21 - 4 - 1


def _algo(random_bn=True, metric_override=None, **kwargs):
    from mmengine.config import Config

    from mmrazor_ext.algorithms import LayerFusion
    from mmrazor_ext.registry import register_all_modules
    register_all_modules()
    cfg = Config.fromfile(BASELINE)
    torch.manual_seed(0)
    algo = LayerFusion(cfg.model, input_shape=(1, 1, 28, 28),
                       data_preprocessor=cfg.data_preprocessor,
                       metric=metric_override or 'block_weight_norm',
                       **kwargs)
    if random_bn:
        randomise(algo.architecture, eval_mode=False)
    return algo


def test_layer_fusion_flops_target_keep_shortcut_and_state_round_trip():
    algo = _algo(target=dict(mode='flops', ratio=0.6),
                 removal_mode='keep_shortcut')
    total = algo.complexity()['flops']
    removed = algo.prune([])  # weight metric: no batches needed
    assert 'backbone.layer2.0' in algo.report['removable_blocks']
    left = algo.complexity()['flops']
    assert left <= 0.6 * total
    # greedy: without the last removed block the target was not yet met
    from mmrazor_ext.algorithms import block_flops
    base = _algo()
    saved = block_flops(base.architecture, base.blocks(), X, 'keep_shortcut')
    assert left + saved[removed[-1]] > 0.6 * total
    # a fresh algorithm restores the same structure from the state dict
    state = algo.state_dict()
    fresh = _algo(target=dict(mode='flops', ratio=0.6),
                  removal_mode='keep_shortcut')
    fresh.load_state_dict(state)  # strict
    assert fresh.removed == removed
    x = torch.randn(2, 1, 28, 28)
    algo.eval()
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), algo(x))


def test_layer_fusion_depth_then_width():
    algo = _algo(target=dict(mode='num_blocks', num=3),
                 channel_pruning=dict(metric='l1', target=dict(
                     mode='flops', ratio=0.7, sampling='global')))
    algo.prune([])
    depth = algo.report['flops_after_depth']
    small = algo.export_model()
    flops = algo.complexity(small)['flops']
    assert abs(flops / depth - 0.7) <= 0.01
    assert len(algo.removed) == 3
    state = algo.state_dict()
    assert state['_extra_state']['channel_subnet']
    fresh = _algo(target=dict(mode='num_blocks', num=3),
                  channel_pruning=dict(metric='l1', target=dict(
                      mode='flops', ratio=0.7, sampling='global')))
    fresh.load_state_dict(state)
    assert fresh.complexity(fresh.export_model())['flops'] == flops


def _linear_block_algo(**kwargs):
    algo = _algo(**kwargs)
    # layer1.1's intermediate ReLU never acts: its merge error is only the
    # border ring (~0.2); the other blocks' ReLUs change ~50 % of entries
    block = algo.architecture.backbone.layer1[1]
    block.norm1.bias.data.fill_(20.0)
    block.norm2.weight.data.fill_(2.0)  # the most important by weight norm
    return algo


def test_layer_fusion_merge_state_optimizer_and_export(tmp_path):
    from mmengine.config import Config

    from mmrazor_ext.algorithms import load_fused_model
    from mmrazor_ext.registry import MODELS
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 1, 28, 28, generator=gen),
                torch.zeros(8, dtype=torch.long)) for _ in range(2)]
    kw = dict(target=dict(mode='num_blocks', num=1),
              merging=dict(linear_tol=0.4, batches=2))
    algo = _linear_block_algo(**kw)
    # the Runner builds the optimizer before pruning
    opt = torch.optim.SGD(algo.parameters(), lr=0.01, momentum=0.9)
    algo.prune(batches)
    name = 'backbone.layer1.1'
    assert algo.merged == [name] and name not in algo.removed
    stats = algo.report['merge_stats']
    assert stats[name]['changed'] == 0
    assert 0 < stats[name]['merge_error'] <= 0.4
    assert min(v['merge_error'] for k, v in stats.items() if k != name) > 0.4
    assert algo.report['non_mergeable']['backbone.layer2.0']
    conv = algo.architecture.get_submodule(name).merged_conv
    before = conv.weight.detach().clone()
    x = torch.randn(2, 1, 28, 28)
    algo.train()
    algo(x).square().mean().backward()
    opt.step()
    assert not torch.equal(conv.weight, before)  # trained by the optimizer
    # resume: a fresh algorithm + optimizer restore structure and state
    fresh = _algo(**kw)
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.01, momentum=0.9)
    fresh.load_state_dict(algo.state_dict())  # strict
    fresh_opt.load_state_dict(opt.state_dict())
    assert fresh.merged == [name] and fresh.removed == algo.removed
    algo.eval()
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), algo(x))
    fresh.train()
    fresh(x).square().mean().backward()
    fresh_opt.step()  # momentum buffers have the merged shapes
    # export files rebuild the merged model from the original definition
    algo.export(str(tmp_path))
    data = json.loads((tmp_path / 'subnet.json').read_text())
    assert data['merged_blocks'] == [name]
    cfg = Config.fromfile(BASELINE)
    small = load_fused_model(MODELS.build(cfg.model),
                             str(tmp_path / 'subnet.json'))
    small.eval()
    with torch.no_grad():
        torch.testing.assert_close(small(x, mode='tensor'), algo(x))
    report = json.loads((tmp_path / 'report.json').read_text())
    assert report['export_check']['ok']
    assert report['flops_after'] == algo.complexity()['flops']
    with pytest.raises(ValueError, match='merging.linear_tol'):
        _algo(merging=dict(linear_tol=-1))
    with pytest.raises(ValueError, match='unknown keys'):
        _algo(merging=dict(tol=0.1))
    with pytest.raises(ValueError, match='calibration batches'):
        _algo(merging=dict(linear_tol=0.1)).prune([])


def test_layer_fusion_merge_with_flops_target_pays_for_merges():
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 1, 28, 28, generator=gen),
                torch.zeros(8, dtype=torch.long)) for _ in range(2)]
    results = {}
    for allow in (True, False):
        algo = _linear_block_algo(target=dict(mode='flops', ratio=0.8),
                                  merging=dict(linear_tol=0.4, batches=2,
                                             allow_more_flops=allow))
        total = algo.complexity()['flops']
        algo.prune(batches)
        assert algo.complexity()['flops'] <= 0.8 * total
        results[allow] = (list(algo.removed), list(algo.merged))
    (rem_m, merged), (rem, no_merge) = results[True], results[False]
    assert no_merge == [] and merged == ['backbone.layer1.1']
    # the merge's extra MACs (+1.38 M) cost one more removal
    assert rem_m[:len(rem)] == rem and len(rem_m) == len(rem) + 1


def test_layer_fusion_distils_from_the_original():
    from mmpretrain.structures import DataSample
    algo = _algo(target=dict(mode='num_blocks', num=2),
                 distill=dict(weight=2.0, temperature=3.0))
    x = torch.randn(4, 1, 28, 28)
    samples = [DataSample().set_gt_label(i) for i in range(4)]
    assert 'loss_kd' not in algo(x, samples, 'loss')  # nothing removed yet
    algo.prune([])
    losses = algo(x, samples, 'loss')
    kd = losses['loss_kd']
    assert torch.isfinite(kd) and float(kd) > 0  # student != teacher now
    sum(losses.values()).backward()
    assert algo.architecture.head.fc.weight.grad is not None
    # the teacher is frozen and outside the module tree / checkpoint
    assert all(p.grad is None for p in algo._teacher.parameters())
    n_teacher = sum(1 for _ in algo._teacher.parameters())
    assert sum(1 for _ in algo.parameters()) < 2 * n_teacher
    assert not any('teacher' in k for k in algo.state_dict())
    with pytest.raises(ValueError, match='distill.temperature'):
        _algo(distill=dict(temperature=0))


def test_init_checkpoint_survives_runner_init_weights(tmp_path):
    # mmengine's Runner calls model.init_weights() after building the model;
    # it must not overwrite the trained weights of init_checkpoint.
    state = {k: v + 0.5 if v.is_floating_point() else v
             for k, v in _algo().architecture.state_dict().items()}
    ckpt = str(tmp_path / 'init.pth')
    torch.save({'state_dict': state}, ckpt)
    loaded = _algo(random_bn=False, init_checkpoint=ckpt)
    loaded.init_weights()
    for k, v in loaded.architecture.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_bad_fusion_target():
    from mmrazor_ext.algorithms import LayerFusion
    with pytest.raises(ValueError, match='target.mode'):
        LayerFusion.check_target(dict(mode='depth'))
    with pytest.raises(ValueError, match='target.ratio'):
        LayerFusion.check_target(dict(mode='flops', ratio=1.5))
    with pytest.raises(ValueError, match='target.num'):
        LayerFusion.check_target(dict(mode='num_blocks', num=-1))
    with pytest.raises(KeyError, match='block_cka'):  # a channel metric
        _algo(metric_override='l1')


def test_fusion_export_is_the_one_format_and_old_files_load(tmp_path):
    """Depth + width + folded BN in one subnet.json (version 2); the files
    LayerFusion wrote before (fusion JSON + channel_subnet.json) load."""
    from mmengine.config import Config

    from mmrazor_ext.algorithms import load_fused_model, load_pruned_model
    from mmrazor_ext.engine import safe_load
    from mmrazor_ext.registry import MODELS
    algo = _algo(target=dict(mode='num_blocks', num=2), fuse_bn=True,
                 channel_pruning=dict(metric='l1', target=dict(
                     mode='flops', flops_ratio=0.7)))
    algo.prune([])
    report = algo.export(str(tmp_path))
    data = json.loads((tmp_path / 'subnet.json').read_text())
    assert data['format'] == 'mmrazor_ext.subnet' and data['version'] == 2
    assert data['removed_blocks'] == algo.removed and data['spaces']
    assert data['bn_folded'] and data['meta']['algorithm'] == 'LayerFusion'
    x = torch.randn(2, 1, 28, 28)
    algo.eval()
    with torch.no_grad():
        ref = algo.export_model().eval()(x, mode='tensor')

    def build():
        return MODELS.build(Config.fromfile(BASELINE).model)

    for path in ('subnet.json', 'pruned_model.pth'):
        small = load_pruned_model(build(), str(tmp_path / path)).eval()
        with torch.no_grad():
            torch.testing.assert_close(small(x, mode='tensor'), ref)
        assert algo.complexity(small)['flops'] == report['flops_after']
    # the version 1 files of LayerFusion
    old = tmp_path / 'old'
    old.mkdir()
    (old / 'channel_subnet.json').write_text(json.dumps({
        'format': 'mmrazor_ext.subnet', 'version': 1,
        'example_inputs': data['example_inputs'],
        'ignore_layers': data['ignore_layers'], 'spaces': data['spaces']}))
    (old / 'subnet.json').write_text(json.dumps({
        'format': 'mmrazor_ext.fusion', 'version': 1,
        'input_shape': [1, 1, 28, 28], 'removal_mode': 'identity',
        'removed_blocks': data['removed_blocks'], 'merged_blocks': [],
        'bn_folded': True, 'channel_subnet': 'channel_subnet.json'}))
    state = safe_load(str(tmp_path / 'pruned_model.pth'))['state_dict']
    torch.save({'state_dict': state, 'meta': {'subnet': 'subnet.json'}},
               old / 'pruned_model.pth')
    for load in (load_fused_model, load_pruned_model):
        small = load(build(), str(old / 'subnet.json')).eval()
        with torch.no_grad():
            torch.testing.assert_close(small(x, mode='tensor'), ref)


def test_plan_fusion_counts_merge_macs():
    from mmrazor_ext.algorithms import plan_fusion
    scores = {'a': 0.1, 'b': 0.2, 'c': 0.3, 'd': 0.4}
    saved = dict.fromkeys(scores, 10)
    merge = dict(errors={'a': 0.0, 'c': 0.05, 'd': 0.5}, linear_tol=0.1,
                 delta={'a': 4, 'c': 4, 'd': 4})
    cands = list(scores)
    # removal wins over merging; merges go to the remaining linear blocks
    assert plan_fusion(scores, cands, saved, 100, dict(
        mode='num_blocks', num=1), merge) == (['a'], ['c'])
    assert plan_fusion(scores, cands, saved, 100, dict(
        mode='num_blocks', num=0), merge) == ([], ['a', 'c'])
    assert plan_fusion(scores, cands, saved, 100, dict(
        mode='num_blocks', num=0), dict(merge, max_blocks=1)) == ([], ['a'])
    # FLOPs target 0.85: without merges 2 removals reach 80 <= 85; the merge
    # of 'c' (+4) still fits after 2 removals (84) ...
    target = dict(mode='flops', ratio=0.85)
    assert plan_fusion(scores, cands, saved, 100, target) == (['a', 'b'], [])
    assert plan_fusion(scores, cands, saved, 100, target, merge) == \
        (['a', 'b'], ['c'])
    # ... at 0.8 it does not (84 > 80): a third block is removed
    target = dict(mode='flops', ratio=0.8)
    assert plan_fusion(scores, cands, saved, 100, target, merge) == \
        (['a', 'b', 'c'], [])
    # merges that add MACs can be refused instead
    assert plan_fusion(scores, cands, saved, 100, target, dict(
        merge, allow_more_flops=False)) == (['a', 'b'], [])
