"""One-shot and iterative pruning through tools/train.py on tiny data."""
import json
import os

import pytest
import torch

from helpers import PY, ROOT, run_tool, tiny_cfg_options

BASELINE = os.path.join(ROOT, 'configs/baselines/resnet20_1xb128_fashionmnist.py')
ONESHOT = os.path.join(ROOT, 'configs/pruning/cdp_resnet20_1xb128_fashionmnist.py')
ITER = os.path.join(ROOT,
                    'configs/pruning/iter_cdp_resnet20_1xb128_fashionmnist.py')


@pytest.fixture(scope='module')
def trained(tiny_baseline):
    return tiny_baseline


def _noaug(tmp_path, base):
    path = tmp_path / 'cfg.py'
    path.write_text(
        f"_base_ = ['{base}']\n"
        "train_dataloader = dict(dataset=dict(\n"
        "    pipeline=[dict(type='mmpretrain.PackInputs')]))\n")
    return str(path)


def _prune(config, work_dir, data_root, ckpt, epochs, extra=(), opts=()):
    return run_tool([
        PY, 'tools/train.py', config, '--work-dir', str(work_dir), *extra,
        *tiny_cfg_options(data_root, max_epochs=epochs),
        f'model.init_checkpoint={ckpt}', 'model.metric_batches=4',
        'model.bn_recalib_batches=2', *opts])


def test_one_shot_cdp_end_to_end(tmp_path, tiny_fmnist, trained):
    _prune(ONESHOT, tmp_path, tiny_fmnist, trained, 1)
    report = json.loads((tmp_path / 'report.json').read_text())
    assert report['metric'] == 'cdp'
    assert abs(report['flops_ratio'] - 0.5) <= 0.01
    assert report['export_check']['ok']
    for key in ('top1_before', 'top1_step1_pruned',
                'top1_step1_bn_recalibrated', 'top1_after'):
        assert 0 <= report[key] <= 100
    # The exported model really has the reported size.
    from mmrazor_ext.engine import safe_load
    from mmrazor_ext.estimators import get_model_complexity
    from mmrazor_ext.models import CifarResNet
    from mmrazor_ext.pruners import load_subnet
    model = CifarResNet(20, 10, 1)
    small = load_subnet(model, str(tmp_path / 'subnet.json'),
                        example_inputs=(torch.randn(1, 1, 28, 28),),
                        load_weights=False)
    state = safe_load(str(tmp_path / 'pruned_model.pth'))['state_dict']
    small.load_state_dict(state)
    cx = get_model_complexity(small, (torch.randn(1, 1, 28, 28),))
    assert cx['flops'] == report['flops_after']
    assert cx['params'] == report['params_after']


@pytest.mark.parametrize('metric', ['l1', 'taylor'])
def test_one_shot_other_metrics(tmp_path, tiny_fmnist, trained, metric):
    config = os.path.join(
        ROOT, f'configs/pruning/{metric}_resnet20_1xb128_fashionmnist.py')
    _prune(config, tmp_path, tiny_fmnist, trained, 1)
    report = json.loads((tmp_path / 'report.json').read_text())
    assert report['metric'] == metric
    assert report['flops_after'] < report['flops_before']


def _final_subnet(path):
    from mmrazor_ext.engine import safe_load
    state = safe_load(str(path))['state_dict']
    return state['_extra_state']


def test_iterative_resume_gives_same_masks(tmp_path, tiny_fmnist, trained):
    config = _noaug(tmp_path, ITER)
    _prune(config, tmp_path / 'straight', tiny_fmnist, trained, 3)
    # "Killed" after epoch 1 (step 2 was taken at its end), then resumed.
    _prune(config, tmp_path / 'killed', tiny_fmnist, trained, 1,
           opts=['param_scheduler.end=3'])
    proc = _prune(config, tmp_path / 'killed', tiny_fmnist, trained, 3,
                  extra=['--resume'])
    assert 'resumed after pruning step 2' in proc.stdout + proc.stderr
    a = _final_subnet(tmp_path / 'straight' / 'epoch_3.pth')
    b = _final_subnet(tmp_path / 'killed' / 'epoch_3.pth')
    assert a['step'] == b['step'] == 3
    assert a['subnet'].keys() == b['subnet'].keys()
    for k in a['subnet']:
        assert torch.equal(a['subnet'][k], b['subnet'][k]), k
    report = json.loads((tmp_path / 'killed' / 'report.json').read_text())
    assert abs(report['flops_ratio'] - 0.5) <= 0.01


def test_iterative_schedule_values():
    from mmrazor_ext.algorithms import IterativePruning
    lin = IterativePruning.fraction.__get__(
        type('S', (), {'_num_steps': 4, 'schedule': 'linear'})())
    cub = IterativePruning.fraction.__get__(
        type('S', (), {'_num_steps': 4, 'schedule': 'cubic'})())
    assert [lin(s) for s in range(5)] == [0, 0.25, 0.5, 0.75, 1.0]
    assert cub(1) == pytest.approx(1 - 0.75 ** 3)
    assert cub(4) == 1.0


def test_bad_target_names_field():
    from mmrazor_ext.algorithms import OneShotPruning
    with pytest.raises(ValueError, match='target.ratio'):
        OneShotPruning.check_target(dict(mode='flops', ratio=1.5))
    with pytest.raises(ValueError, match='target.mode'):
        OneShotPruning.check_target(dict(mode='magic', ratio=0.5))


def test_one_shot_fm_reconstruction(tmp_path, tiny_fmnist, trained):
    config = os.path.join(
        ROOT, 'configs/pruning/fmrecon_resnet20_1xb128_fashionmnist.py')
    _prune(config, tmp_path, tiny_fmnist, trained, 1)
    report = json.loads((tmp_path / 'report.json').read_text())
    assert report['metric'] == 'fm_reconstruction'
    assert abs(report['flops_ratio'] - 0.5) <= 0.01


def test_init_checkpoint_survives_runner_init_weights(trained):
    """The Runner calls model.init_weights() after building the model; the
    trained weights must not be re-initialised (they were, once)."""
    from mmengine.config import Config
    from mmengine.registry import DefaultScope

    from mmrazor_ext.engine import safe_load
    from mmrazor_ext.registry import MODELS, register_all_modules
    register_all_modules()
    cfg = Config.fromfile(ONESHOT)
    cfg.model.init_checkpoint = trained
    cfg.model.setdefault('data_preprocessor', cfg.data_preprocessor)
    with DefaultScope.overwrite_default_scope('mmrazor_ext'):
        algo = MODELS.build(cfg.model)
    algo.init_weights()
    state = safe_load(trained)['state_dict']
    for key, value in algo.architecture.state_dict().items():
        torch.testing.assert_close(value, state[key], msg=key)


# -- the algorithm interface and the one saved format --------------------------
def _oneshot(**kwargs):
    from mmengine.config import Config

    from mmrazor_ext.algorithms import OneShotPruning
    from mmrazor_ext.registry import register_all_modules
    register_all_modules()
    cfg = Config.fromfile(BASELINE)
    torch.manual_seed(0)
    return OneShotPruning(cfg.model, input_shape=(1, 1, 28, 28),
                          data_preprocessor=cfg.data_preprocessor,
                          bn_recalib_batches=0, **kwargs)


def _tiny_batches(n=2, seed=0):
    """mmengine data batches, as the Runner's train loader gives them."""
    from mmpretrain.structures import DataSample
    g = torch.Generator().manual_seed(seed)
    return [{'inputs': [torch.randint(0, 256, (1, 28, 28), generator=g,
                                      dtype=torch.uint8) for _ in range(8)],
             'data_samples': [DataSample().set_gt_label(int(y)) for y in
                              torch.randint(0, 10, (8,), generator=g)]}
            for _ in range(n)]


def test_algorithms_declare_the_hook_interface():
    from mmrazor_ext.algorithms import (
        IterativePruning,
        LayerFusion,
        OneShotPruning,
        PruningAlgorithm,
    )
    from mmrazor_ext.algorithms.amc import AMCPruning
    for cls in (OneShotPruning, IterativePruning, LayerFusion, AMCPruning):
        assert issubclass(cls, PruningAlgorithm)
        assert not getattr(cls, '__abstractmethods__', None), cls
    algo = _oneshot(metric='l1')
    for attr in ('step', 'report', 'target', 'metric', 'bn_recalib_batches',
                 'interval', 'num_steps', 'example_inputs'):
        assert hasattr(algo, attr), attr
    assert algo.interval is None and algo.num_steps == 1
    import mmrazor_ext.engine.hooks.pruning_hook as hook_module
    from mmrazor_ext.registry import HOOKS
    assert HOOKS.get('PruningHook') is hook_module.PruningHook
    with open(hook_module.__file__) as f:
        assert 'algorithms' not in ''.join(
            line for line in f if line.startswith(('from', 'import')))


def test_flops_ratio_is_the_explicit_name_of_ratio():
    from mmrazor_ext.algorithms import LayerFusion, OneShotPruning
    t = OneShotPruning.check_target(dict(mode='flops', flops_ratio=0.4))
    assert t == dict(mode='flops', ratio=0.4, sampling='global')
    assert OneShotPruning.check_target(
        dict(mode='flops', ratio=0.4, flops_ratio=0.4))['ratio'] == 0.4
    assert LayerFusion.check_target(
        dict(mode='flops', flops_ratio=0.7))['ratio'] == 0.7
    with pytest.raises(ValueError, match='flops_ratio'):
        OneShotPruning.check_target(dict(mode='uniform', flops_ratio=0.4))
    with pytest.raises(ValueError, match='flops_ratio'):
        OneShotPruning.check_target(
            dict(mode='flops', ratio=0.5, flops_ratio=0.4))
    with pytest.raises(ValueError, match='target.ratio'):
        OneShotPruning.check_target(dict(mode='flops', flops_ratio=1.2))
    with pytest.raises(ValueError, match='target.sampling'):
        OneShotPruning.check_target(dict(mode='flops', ratio=0.5,
                                         sampling='random'))
    with pytest.raises(ValueError, match='target.ratios'):
        OneShotPruning.check_target(dict(mode='nonuni', ratios=0.5))
    with pytest.raises(KeyError, match='ChannelMetric'):
        _oneshot(metric='block_cka')


@pytest.mark.parametrize('metric', ['l1', 'cdp', 'apoz', 'taylor',
                                    'fm_reconstruction'])
def test_metric_needs_drive_the_collection(metric):
    from mmrazor_ext.registry import METRICS
    algo = _oneshot(metric=metric, target=dict(mode='flops', ratio=0.6),
                    metric_batches=2)
    contents = algo.collect_contents(_tiny_batches())
    assert (contents is None) == (METRICS.get(metric).needs == 'weights')
    subnet = algo.prune(_tiny_batches())
    assert algo.step == 1 and subnet.keys() == algo.pruner.subnet.keys()
    flops = algo.pruner.estimate_flops(subnet)
    assert abs(flops / algo.pruner.original_flops - 0.6) <= 0.02


def test_export_writes_the_one_format_and_it_reloads(tmp_path):
    from mmengine.config import Config

    from mmrazor_ext.algorithms import load_pruned_model
    from mmrazor_ext.engine import safe_load
    from mmrazor_ext.pruners import load_subnet
    from mmrazor_ext.registry import MODELS
    algo = _oneshot(metric='l1', target=dict(mode='flops', flops_ratio=0.5))
    algo.prune([])
    report = algo.export(str(tmp_path))
    data = json.loads((tmp_path / 'subnet.json').read_text())
    assert data['format'] == 'mmrazor_ext.subnet' and data['version'] == 2
    assert data['weights'] == 'pruned_model.pth'
    assert data['meta']['algorithm'] == 'OneShotPruning'
    assert 'removal_mode' not in data and data['spaces']
    ckpt = safe_load(str(tmp_path / 'pruned_model.pth'))
    assert ckpt['subnet']['spaces'] == data['spaces']
    x = torch.randn(2, 1, 28, 28)
    algo.eval()
    with torch.no_grad():
        ref = algo(x)
    build = lambda: MODELS.build(Config.fromfile(BASELINE).model)  # noqa
    # either file alone rebuilds the pruned model with its weights
    for path in ('subnet.json', 'pruned_model.pth'):
        small = load_pruned_model(build(), str(tmp_path / path)).eval()
        with torch.no_grad():
            torch.testing.assert_close(small(x, mode='tensor'), ref)
        assert algo.complexity(small)['flops'] == report['flops_after']
    # the pruner's reader still reads the structure
    small = load_subnet(build(), str(tmp_path / 'subnet.json'),
                        load_weights=False)
    small.load_state_dict(ckpt['state_dict'])


def test_old_pruned_files_still_load(tmp_path):
    """Version 1 subnet JSON + bare weights, and AMC kmc_pruning files."""
    from mmrazor_ext.algorithms import load_pruned_model
    from mmrazor_ext.models import CifarResNet
    from mmrazor_ext.pruners import ChannelPruner
    model = CifarResNet(20, 10, 1).eval()
    x = torch.randn(1, 1, 28, 28)
    pruner = ChannelPruner(model, (x,))
    subnet = pruner.sample_subnet_uniform(0.5)
    pruner.set_subnet(subnet)
    small = pruner.export()
    ref = small(x)
    # version 1, as ChannelPruner.save_subnet wrote it before version 2
    spaces = {n: {'num_channels': pruner.channel_spaces[n].num_channels,
                  'kept': m.nonzero().reshape(-1).tolist()}
              for n, m in pruner.subnet.items()}
    torch.save(small.state_dict(), tmp_path / 'v1.pth')
    (tmp_path / 'v1.json').write_text(json.dumps({
        'format': 'mmrazor_ext.subnet', 'version': 1,
        'example_inputs': [{'shape': [1, 1, 28, 28],
                            'dtype': 'torch.float32'}],
        'ignore_layers': list(pruner.ignore_layers), 'spaces': spaces,
        'weights': 'v1.pth'}))
    old = load_pruned_model(CifarResNet(20, 10, 1), str(tmp_path / 'v1.json'))
    torch.testing.assert_close(old.eval()(x), ref)
    # AMC's kmc_pruning checkpoint (before version 2)
    torch.save({'state_dict': small.state_dict(), 'kmc_pruning': {
        'format': 'mmrazor_ext.kmc_pruning', 'version': 1,
        'input_shapes': [[1, 1, 28, 28]],
        'ignore_layers': list(pruner.ignore_layers), 'subnet': spaces,
        'meta': {'episode': 3}}}, tmp_path / 'amc_ep3.pth')
    old = load_pruned_model(CifarResNet(20, 10, 1),
                            str(tmp_path / 'amc_ep3.pth'))
    torch.testing.assert_close(old.eval()(x), ref)
    with pytest.raises(ValueError, match='does not match'):
        load_pruned_model(small, str(tmp_path / 'v1.json'))


# -- reconstruction after pruning ------------------------------------------------
def test_reconstruct_in_train_and_resume_restores_refitted_weights(
        tmp_path, tiny_fmnist, trained):
    from mmrazor_ext.engine import safe_load
    l1 = os.path.join(ROOT,
                      'configs/pruning/l1_resnet20_1xb128_fashionmnist.py')
    config = tmp_path / 'reconstruct.py'
    config.write_text(
        f"_base_ = ['{_noaug(tmp_path, l1)}']\n"
        "model = dict(reconstruct=dict(method='least_squares', "
        "num_batches=2, points_per_image=8))\n")
    wd = tmp_path / 'run'
    proc = _prune(str(config), wd, tiny_fmnist, trained, 1)
    assert 'consumers refitted' in proc.stdout + proc.stderr
    report = json.loads((wd / 'report.json').read_text())
    for key in ('top1_step1_pruned', 'top1_step1_reconstructed',
                'top1_step1_bn_recalibrated', 'top1_after'):
        assert 0 <= report[key] <= 100, key
    rec = report['reconstruction_step1']
    assert rec['layers'] > 0
    assert rec['mean_rel_error_after'] < rec['mean_rel_error_before']
    saved = safe_load(str(wd / 'pruned_model.pth'))['state_dict']
    ckpt = safe_load(str(wd / 'epoch_1.pth'))['state_dict']
    # resumed after the epoch-1 checkpoint: nothing is pruned or refitted
    # again, the model is the checkpoint's (refitted, then fine-tuned)
    (wd / 'pruned_model.pth').unlink()
    proc = _prune(str(config), wd, tiny_fmnist, trained, 1,
                  extra=['--resume'])
    out = proc.stdout + proc.stderr
    assert 'resumed after pruning step 1' in out
    assert 'consumers refitted' not in out
    again = safe_load(str(wd / 'pruned_model.pth'))['state_dict']
    assert again.keys() == saved.keys()
    for k in saved:
        torch.testing.assert_close(again[k], saved[k], rtol=0, atol=0,
                                   msg=k)
    assert ckpt['_extra_state']['report']['top1_step1_reconstructed'] == \
        report['top1_step1_reconstructed']


def test_reconstruct_option_and_iterative_reference():
    from mmrazor_ext.algorithms import IterativePruning, LayerFusion
    with pytest.raises(ValueError, match='reconstruct.method'):
        _oneshot(reconstruct=dict(method='magic'))
    with pytest.raises(ValueError, match='reconstruct: unknown keys'):
        _oneshot(reconstruct=dict(batches=2))
    with pytest.raises(ValueError, match='reconstruct.num_batches'):
        _oneshot(reconstruct=dict(num_batches=0))
    with pytest.raises(ValueError, match='reconstruct.ridge'):
        _oneshot(reconstruct=dict(ridge=-1.0))
    # off: no copy, no report entry
    algo = _oneshot(metric='l1')
    assert algo.reconstruction_reference() is None
    algo.prune(_tiny_batches())
    assert algo.reconstruct_pruned(_tiny_batches()) is None
    # on: the copy taken before the step is what gets reproduced
    from mmengine.config import Config
    cfg = Config.fromfile(BASELINE)
    torch.manual_seed(0)
    algo = IterativePruning(cfg.model, input_shape=(1, 1, 28, 28),
                            data_preprocessor=cfg.data_preprocessor,
                            bn_recalib_batches=0, metric='l1', num_steps=2,
                            target=dict(mode='flops', ratio=0.5),
                            reconstruct=dict(num_batches=2,
                                             points_per_image=8))
    for step in (1, 2):
        ref = algo.reconstruction_reference()
        x = torch.randn(2, 1, 28, 28)
        with torch.no_grad():  # at step 2: the step-1 masked model
            expected = algo.architecture.eval()(x, mode='tensor')
            torch.testing.assert_close(ref.eval()(x, mode='tensor'),
                                       expected)
        algo.prune(_tiny_batches(), step)
        rep = algo.reconstruct_pruned(_tiny_batches(), ref)
        assert rep['layers'], step
        r = algo.report[f'reconstruction_step{step}']
        assert r['mean_rel_error_after'] < r['mean_rel_error_before']
    # fusion refits its width step against the shallower model
    assert LayerFusion.reconstruction_reference(None) is None


def test_sensitivity_sampling_on_one_shot():
    with pytest.raises(ValueError, match='sensitivity: only used with'):
        _oneshot(sensitivity=dict(step=0.25))
    with pytest.raises(ValueError, match="needs mode='flops'"):
        _oneshot(target=dict(mode='uniform', ratio=0.5,
                             sampling='sensitivity'))
    with pytest.raises(ValueError, match='sensitivity.bn_batches'):
        _oneshot(target=dict(mode='flops', ratio=0.5,
                             sampling='sensitivity'),
                 sensitivity=dict(bn_batches=-1))
    algo = _oneshot(metric='l1', target=dict(mode='flops', ratio=0.6,
                                             sampling='sensitivity'),
                    sensitivity=dict(step=0.25, bn_batches=1,
                                     eval_batches=1, progress=False))
    subnet = algo.prune(_tiny_batches())
    ratio = algo.pruner.estimate_flops(subnet) / algo.pruner.original_flops
    assert 0.55 <= ratio <= 0.6
    rep = algo.report['sensitivity_step1']
    assert rep['flops_ratio'] == pytest.approx(ratio)
    assert set(rep['keep_ratios']) == set(subnet)


def test_fusion_reconstructs_its_width_step():
    from mmengine.config import Config

    from mmrazor_ext.algorithms import LayerFusion
    from mmrazor_ext.registry import register_all_modules
    register_all_modules()
    cfg = Config.fromfile(BASELINE)
    torch.manual_seed(0)
    algo = LayerFusion(cfg.model, input_shape=(1, 1, 28, 28),
                       data_preprocessor=cfg.data_preprocessor,
                       metric='block_weight_norm', bn_recalib_batches=0,
                       target=dict(mode='num_blocks', num=1),
                       channel_pruning=dict(metric='l1', target=dict(
                           mode='flops', ratio=0.7)),
                       reconstruct=dict(num_batches=2, points_per_image=8))
    assert algo.channel_pruner() is None
    assert algo.reconstruction_reference() is None
    algo.prune(_tiny_batches(), 1)
    rep = algo.reconstruct_pruned(_tiny_batches())
    assert rep['layers'] and algo.removed
    r = algo.report['reconstruction_step1']
    assert r['mean_rel_error_after'] < r['mean_rel_error_before']
    algo.export_check(algo.export_model())
