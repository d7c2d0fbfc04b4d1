"""One-shot and iterative pruning through tools/train.py on tiny data."""
import json
import os

import pytest
import torch

from conftest import ROOT, run_tool, tiny_cfg_options

PY = os.path.join(ROOT, '.venv', 'bin', 'python')
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
        OneShotPruning._check_target(dict(mode='flops', ratio=1.5))
    with pytest.raises(ValueError, match='target.mode'):
        OneShotPruning._check_target(dict(mode='magic', ratio=0.5))


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
