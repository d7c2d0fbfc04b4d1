"""Reliability suite (issue 17, README "Reliability"): kill -9 and
``--resume`` give the uninterrupted run bit for bit."""
import os
import subprocess
from types import SimpleNamespace

import pytest
import torch

from helpers import BASELINE, PY, ROOT, run_tool
from helpers.data import make_fmnist
from mmrazor_ext.engine import safe_load

KILL_HOOK = '''
import os, signal
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

@HOOKS.register_module()
class KillAtIter(Hook):
    priority = 'LOWEST'

    def __init__(self, at):
        self.at = at

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        if runner.iter + 1 == self.at:
            os.kill(os.getpid(), signal.SIGKILL)
'''


@pytest.fixture(scope='module')
def resume_env(tmp_path_factory):
    """The shipped augmented config with 2 persistent workers, 8 images a
    batch, 2 epochs of 8 iterations; the uninterrupted run."""
    tmp = tmp_path_factory.mktemp('resume')
    data = make_fmnist(str(tmp / 'data'))
    (tmp / 'killhook.py').write_text(KILL_HOOK)
    kill_cfg = tmp / 'kill_at_11.py'
    kill_cfg.write_text(
        f"_base_ = ['{BASELINE}']\n"
        "custom_imports = dict(imports=['killhook'])\n"
        "custom_hooks = [dict(type='KillAtIter', at=11)]\n")
    opts = [f'{s}_dataloader.dataset.data_root={data}'
            for s in ('train', 'val', 'test')] + [
        'train_dataloader.batch_size=8', 'train_cfg.max_epochs=2',
        'param_scheduler.end=2', 'val_dataloader.num_workers=0',
        'val_dataloader.persistent_workers=False']
    env = SimpleNamespace(tmp=tmp, opts=opts, kill_cfg=str(kill_cfg),
                          pythonpath=str(tmp))
    run_tool([PY, 'tools/train.py', BASELINE, '--work-dir',
              str(tmp / 'straight'), '--cfg-options', *opts])
    env.straight = safe_load(str(tmp / 'straight' / 'epoch_2.pth'))
    return env


def _run(env, config, work_dir, *extra, opts=(), killed=False):
    args = [PY, 'tools/train.py', config, '--work-dir', str(work_dir), *extra,
            '--cfg-options', *env.opts, *opts]
    if not killed:
        return run_tool(args, env={'PYTHONPATH': env.pythonpath})
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, OMP_NUM_THREADS='1',
                                                PYTHONPATH=env.pythonpath))
    assert proc.returncode == -9, proc.stderr[-3000:]


def _assert_bit_exact(env, path):
    a, b = env.straight, safe_load(str(path))
    assert b['meta']['iter'] == a['meta']['iter'] == 16
    diff = [k for k, v in a['state_dict'].items()
            if not torch.equal(v, b['state_dict'][k])]
    assert not diff, f'{len(diff)} of {len(a["state_dict"])} tensors differ'
    for k, state in a['optimizer']['state'].items():
        assert torch.equal(state['momentum_buffer'],
                           b['optimizer']['state'][k]['momentum_buffer'])


W0 = ['train_dataloader.num_workers=0',
      'train_dataloader.persistent_workers=False']
BY_ITER = ['default_hooks.checkpoint.by_epoch=False',
           'default_hooks.checkpoint.interval=3']


def test_resume_kill_in_epoch_2_two_workers(resume_env):
    """Flow 1: killed in epoch 2 (epoch checkpoints, 2 persistent workers,
    augmentation as shipped), then ``--resume`` with a ``load_from`` of
    another run given too (mmengine resumed *from* that file)."""
    wd = resume_env.tmp / 'flow1'
    other = resume_env.tmp / 'straight' / 'epoch_2.pth'
    _run(resume_env, resume_env.kill_cfg, wd, killed=True)
    proc = _run(resume_env, BASELINE, wd, '--resume',
                opts=[f'load_from={other}'])
    log = proc.stdout + proc.stderr
    assert 'resumed epoch: 1, iter: 8' in log
    assert f'continuing from {wd / "epoch_1.pth"}; load_from={other} is ' \
        'ignored' in log
    _assert_bit_exact(resume_env, wd / 'epoch_2.pth')


def test_resume_kill_mid_epoch_iteration_checkpoint(resume_env):
    """Flow 2: checkpoints every 3 iterations, killed at iteration 11; the
    resume continues inside epoch 2 (no workers: worker count is free)."""
    wd = resume_env.tmp / 'flow2'
    _run(resume_env, resume_env.kill_cfg, wd, opts=W0 + BY_ITER, killed=True)
    proc = _run(resume_env, BASELINE, wd, '--resume', opts=W0 + BY_ITER)
    log = proc.stdout + proc.stderr
    assert 'resumed epoch: 1, iter: 9' in log
    assert 'epoch 2 continues at batch 2/8' in log
    _assert_bit_exact(resume_env, wd / 'iter_16.pth')


def test_resume_path_wins_over_load_from(resume_env):
    """Flow 3: ``--resume PATH`` with ``load_from`` set to another run's
    final weights resumes from PATH (and says so)."""
    src = resume_env.tmp / 'straight'
    wd = resume_env.tmp / 'flow3'
    proc = _run(resume_env, BASELINE, wd, '--resume', str(src / 'epoch_1.pth'),
                opts=[f'load_from={src / "epoch_2.pth"}'])
    log = proc.stdout + proc.stderr
    assert 'resumed epoch: 1, iter: 8' in log
    assert f'load_from={src / "epoch_2.pth"} is ignored' in log
    _assert_bit_exact(resume_env, wd / 'epoch_2.pth')


def test_resume_kill_before_first_checkpoint(resume_env):
    """Flow 4: killed in epoch 1 before any checkpoint: ``--resume`` finds
    nothing and starts over (from ``load_from`` if given, here scratch)."""
    wd = resume_env.tmp / 'flow4'
    cfg = resume_env.tmp / 'kill_at_3.py'
    cfg.write_text(open(resume_env.kill_cfg).read().replace('at=11', 'at=3'))
    _run(resume_env, str(cfg), wd, killed=True)
    proc = _run(resume_env, BASELINE, wd, '--resume')
    assert 'starting from scratch' in proc.stdout + proc.stderr
    _assert_bit_exact(resume_env, wd / 'epoch_2.pth')


def test_resume_from_a_checkpoint_that_does_not_fit_is_an_error(resume_env):
    """``--resume`` loads as strictly as ``load_from``: a checkpoint whose
    weights do not fit the model (here one tensor of another shape, one
    missing) stops the run naming them, before any step; ``--non-strict``
    still resumes the matching part, with mmengine's warnings."""
    state = safe_load(str(resume_env.tmp / 'straight' / 'epoch_1.pth'))
    sd = state['state_dict']
    key = next(k for k, v in sd.items() if v.dim() == 4)
    sd[key] = torch.zeros(sd[key].shape[0] + 1, *sd[key].shape[1:])
    gone = next(k for k in sd if k.endswith('running_var'))
    del sd[gone]
    bad = resume_env.tmp / 'doctored.pth'
    torch.save(state, bad)
    wd = resume_env.tmp / 'flow5'
    args = [PY, 'tools/train.py', BASELINE, '--work-dir', str(wd),
            '--resume', str(bad), '--cfg-options', *resume_env.opts, *W0]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ,
                                                OMP_NUM_THREADS='1'))
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert 'CheckpointMismatchError' in log
    assert key.split('.', 1)[-1] in log and gone.split('.', 1)[-1] in log
    assert not list(wd.glob('*.pth'))  # nothing trained, nothing saved
    proc = _run(resume_env, BASELINE, resume_env.tmp / 'flow6', '--resume',
                str(bad), '--non-strict', opts=W0)
    assert 'resumed epoch: 1, iter: 8' in proc.stdout + proc.stderr
