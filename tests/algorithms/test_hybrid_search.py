"""Hybrid search end to end through tools/train.py, tools/search.py,
tools/dist_train.sh and the scripts: kill and resume, several workers,
exported results, training the searched subnet."""
import json
import os
import signal
import subprocess
import time

import optuna
import pytest
import torch
from optuna.trial import TrialState

from helpers import PY, ROOT, run_tool
from helpers.data import make_cifar10
from mmrazor_ext.estimators import get_model_complexity
from mmrazor_ext.models import CifarResNet
from mmrazor_ext.pruners import ChannelPruner, load_subnet

SEARCH_CFG = 'configs/hybrid_search/hybrid_search_resnet20_1xb128_fashionmnist.py'
STUDY = 'hybrid_search_resnet20_1xb128_fashionmnist'


def _search_cmd(tiny_fmnist, ckpt, work_dir, result_dir, n_trials,
                tool='tools/train.py', extra=()):
    d = tiny_fmnist
    return [PY, tool, *extra, SEARCH_CFG, '--work-dir', str(work_dir),
            '--cfg-options',
            f'train_dataloader.dataset.data_root={d}',
            f'val_dataloader.dataset.data_root={d}',
            f'test_dataloader.dataset.data_root={d}',
            'train_dataloader.batch_size=8', 'train_dataloader.num_workers=0',
            'train_dataloader.persistent_workers=False',
            'val_dataloader.num_workers=0',
            'val_dataloader.persistent_workers=False',
            f'model.init_checkpoint={ckpt}', f'train_cfg.n_trials={n_trials}',
            'train_cfg.bn_batches=2', 'train_cfg.eval_samples=32',
            'train_cfg.sampler.population_size=4',
            'train_cfg.targets=[0.5,0.35]',
            f'train_cfg.result_dir={result_dir}']


def _study(work_dir):
    return optuna.load_study(study_name=STUDY,
                             storage=f'sqlite:///{work_dir}/search.db')


def _complete(work_dir):
    try:
        return [t for t in _study(work_dir).trials
                if t.state == TrialState.COMPLETE]
    except Exception:  # study not created yet
        return []


@pytest.fixture(scope='module')
def killed_and_resumed(tmp_path_factory, tiny_fmnist, tiny_baseline):
    """A search SIGKILLed after >= 4 completed trials, then re-run."""
    wd = tmp_path_factory.mktemp('search')
    out = wd / 'results'
    cmd = _search_cmd(tiny_fmnist, tiny_baseline, wd, out, 24)
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    t0 = time.time()
    while len(_complete(wd)) < 4:
        assert proc.poll() is None, 'search ended before it was killed'
        assert time.time() - t0 < 240
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {t.number: t.values for t in _complete(wd)}
    assert 4 <= len(before) < 24
    assert not (out / 'search_results.json').exists()
    run_tool(cmd)
    return wd, out, before


def test_search_resumes_after_kill(killed_and_resumed):
    wd, out, before = killed_and_resumed
    done = _complete(wd)
    assert len(done) >= 24
    after = {t.number: t.values for t in done}
    assert {n: after[n] for n in before} == before   # nothing redone / lost
    assert max(after) > max(before)                  # numbering continued


def test_search_results_export_to_claimed_flops(killed_and_resumed,
                                                tiny_baseline):
    from mmrazor_ext.algorithms import load_search_results
    _, out, _ = killed_and_resumed
    data = load_search_results(str(out / 'search_results.json'))
    assert data['pareto'] and (out / 'search_pareto.png').stat().st_size
    from mmrazor_ext.engine.checkpoint import safe_load
    state = safe_load(tiny_baseline)['state_dict']
    model = CifarResNet(20, 10, 1)
    model.load_state_dict(state)
    x = torch.randn(1, 1, 28, 28)
    pruner = ChannelPruner(model, x)
    assert data['original_flops'] == pruner.original_flops
    for e in data['pareto']:
        pruner.set_subnet({k: torch.tensor(v) for k, v in e['subnet'].items()})
        cx = get_model_complexity(pruner.export(check=False), x)
        assert (cx['flops'], cx['params']) == (e['flops'], e['params'])
    for t, best in data['best'].items():
        small = load_subnet(CifarResNet(20, 10, 1), str(out /
                                                        best['subnet_file']))
        f = get_model_complexity(small, x)['flops']
        assert f == best['flops'] and f <= float(t) * data['original_flops']
    bad = dict(data, pareto=[dict(data['pareto'][0], top1='high')])
    (out / 'bad.json').write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r'pareto\[0\]\.top1'):
        load_search_results(str(out / 'bad.json'))


def test_two_workers_share_one_study(tmp_path, tiny_fmnist, tiny_baseline):
    out = tmp_path / 'results'
    run_tool(_search_cmd(tiny_fmnist, tiny_baseline, tmp_path, out, 12,
                         tool='tools/search.py', extra=['--workers', '2']))
    trials = _study(tmp_path).trials
    # seeds beyond n_trials stay queued for a later, longer run
    # PRUNED: a worker's trial that would overshoot n_trials is given up
    assert {t.state for t in trials} <= {TrialState.COMPLETE,
                                         TrialState.WAITING,
                                         TrialState.PRUNED}
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) >= 12
    assert len({t.number for t in trials}) == len(trials)
    assert (out / 'search_results.json').exists()


def test_train_searched_subnet(tmp_path, killed_and_resumed, tiny_fmnist,
                               tiny_baseline):
    from helpers import tiny_cfg_options
    _, out, _ = killed_and_resumed
    sub = out / 'subnet_flops0.50.json'
    cfg = 'configs/hybrid_search/hybrid_train_resnet20_1xb128_fashionmnist.py'
    run_tool([PY, 'tools/train.py', cfg, '--work-dir', str(tmp_path),
              *tiny_cfg_options(tiny_fmnist), f'model.subnet={sub}',
              f'model.init_checkpoint={tiny_baseline}'])
    from mmrazor_ext.engine.checkpoint import safe_load
    state = safe_load(str(tmp_path / 'epoch_1.pth'))
    small = load_subnet(CifarResNet(20, 10, 1), str(sub))
    # the trained model has exactly the subnet's conv weights
    trained = sorted(v.numel() for k, v in state['state_dict'].items()
                     if k.startswith('architecture.') and v.ndim == 4)
    expected = sorted(v.numel() for v in small.state_dict().values()
                      if v.ndim == 4)
    assert trained == expected
    dense = sum(v.numel() for v in CifarResNet(20, 10, 1).state_dict()
                .values() if v.ndim == 4)
    assert sum(trained) < dense


@pytest.mark.parametrize('depth', [20, 56])
def test_hybrid_script_quick(tmp_path, tiny_fmnist, depth):
    env = dict(DATA_ROOT=tiny_fmnist, BASE_WORK_DIR=str(tmp_path / 'base'),
               BASE_EPOCHS='1', SEARCH_WORK_DIR=str(tmp_path / 'search'),
               TRAIN_WORK_DIR=str(tmp_path / 'train'), QUICK_TRIALS='6')
    script = f'scripts/hybrid_search/run_hybrid_fashionmnist_resnet{depth}.sh'
    run_tool(['bash', script, 'quick'], env=env, timeout=400)
    assert (tmp_path / 'base' / 'search_results.json').exists()
    assert (tmp_path / 'base' / 'subnet_flops0.50.json').exists()
    assert (tmp_path / 'train' / 'epoch_1.pth').exists()
    if depth != 20:
        return
    # the seed's mode name is an alias of `search` (resumes: no new trials)
    run_tool(['bash', 'scripts/hybrid_search/run_hybrid_fashionmnist_resnet20.sh',
              'test_search_geatpy_discrete_inference'],
             env=dict(env, N_TRIALS='6', DATA_EXTRA=(
                 'train_dataloader.batch_size=8 '
                 'train_dataloader.num_workers=0 '
                 'train_dataloader.persistent_workers=False '
                 'val_dataloader.num_workers=0 '
                 'val_dataloader.persistent_workers=False '
                 'train_cfg.bn_batches=2 train_cfg.eval_samples=32')),
             timeout=400)


@pytest.mark.parametrize('depth', [18, 56])
def test_cifar_script_quick(tmp_path, depth):
    data = make_cifar10(str(tmp_path / 'cifar'))
    extra = ' '.join(f'{s}_dataloader.dataset.verify_md5=False'
                     for s in ('train', 'val', 'test'))
    env = dict(DATA_ROOT=data, DATA_EXTRA=extra,
               BASE_WORK_DIR=str(tmp_path / 'base'), BASE_EPOCHS='1',
               SEARCH_WORK_DIR=str(tmp_path / 'search'),
               TRAIN_WORK_DIR=str(tmp_path / 'train'), QUICK_TRIALS='4')
    run_tool(['bash', f'scripts/hybrid_search/run_hybrid_cifar_resnet{depth}.sh',
              'quick'], env=env, timeout=400)
    assert (tmp_path / 'train' / 'epoch_1.pth').exists()


def test_in1k_train_script_quick(tmp_path):
    import numpy as np
    from PIL import Image
    classes = ['n01440764', 'n01443537']
    for split in ('train', 'val'):
        for c in classes:
            os.makedirs(tmp_path / 'inet' / split / c)
            for i in range(2):
                Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)).save(
                    tmp_path / 'inet' / split / c / f'{i}.JPEG')
    from mmengine.config import Config

    from mmrazor_ext.registry import MODELS
    cfg = Config.fromfile(
        os.path.join(ROOT, 'configs/baselines/resnet18_8xb32_in1k.py'))
    model = MODELS.build(cfg.model)
    pruner = ChannelPruner(model, torch.randn(1, 3, 224, 224))
    pruner.set_subnet(pruner.sample_subnet_uniform(0.5))
    sub = pruner.save_subnet(str(tmp_path / 'subnet.json'), weights=False)
    extra = ' '.join(f'{s}_dataloader.dataset.metainfo.classes={classes}'
                     .replace(' ', '') for s in ('train', 'val', 'test'))
    run_tool(['bash', 'scripts/hybrid_search/run_hybrid_in1k_resnet18_train.sh',
              '0', sub, '1'],
             env=dict(DATA_ROOT=str(tmp_path / 'inet'), QUICK='1',
                      DATA_EXTRA=extra, WORK_DIR=str(tmp_path / 'train')),
             timeout=400)
    assert (tmp_path / 'train' / 'epoch_1.pth').exists()


def test_search_tool_rejects_bad_workers():
    proc = subprocess.run([PY, 'tools/search.py', SEARCH_CFG,
                           '--workers', '0'], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode != 0 and '--workers' in proc.stderr


def test_torchrun_ranks_share_one_study(tmp_path, tiny_fmnist, tiny_baseline):
    """Two gloo ranks search one SQLite study (dist_train.sh); rank 0
    writes the results after a barrier. Also covers the Runner's weight
    sync with non-tensor algorithm state."""
    out = tmp_path / 'results'
    cmd = _search_cmd(tiny_fmnist, tiny_baseline, tmp_path, out, 10)
    config_at = cmd.index(SEARCH_CFG)
    run_tool(['bash', 'tools/dist_train.sh', SEARCH_CFG, '2',
              *cmd[config_at + 1:]], env={'PORT': '29613'})
    trials = _study(tmp_path).trials
    # PRUNED: a worker's trial that would overshoot n_trials is given up
    assert {t.state for t in trials} <= {TrialState.COMPLETE,
                                         TrialState.WAITING,
                                         TrialState.PRUNED}
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) >= 10
    assert (out / 'search_results.json').exists()


def test_prefixed_checkpoint_and_file_mode(tmp_path):
    """An algorithm checkpoint (keys under ``architecture.``) initialises
    another algorithm; subnet JSONs get the usual file mode, not 0600."""
    from mmengine.config import Config

    from mmrazor_ext.algorithms import HybridSearch
    from mmrazor_ext.registry import MODELS, register_all_modules
    register_all_modules()
    cfg = Config.fromfile(os.path.join(
        ROOT, 'configs/baselines/resnet20_1xb128_fashionmnist.py'))
    arch = dict(cfg.model, data_preprocessor=cfg.data_preprocessor)
    src = MODELS.build(arch)
    torch.save({'state_dict': {f'architecture.{k}': v for k, v in
                               src.state_dict().items()}},
               tmp_path / 'algo.pth')
    algo = HybridSearch(arch, input_shape=(1, 1, 28, 28),
                        init_checkpoint=str(tmp_path / 'algo.pth'))
    for k, v in src.state_dict().items():
        assert torch.equal(algo.architecture.state_dict()[k], v)
    path = algo.pruner.save_subnet(str(tmp_path / 's.json'), weights=False)
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask
