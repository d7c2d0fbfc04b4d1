"""The tools' config guard: mmcv-1.x / mmcls-0.x keys are errors naming
their mmengine equivalent, unread keys are warnings, and a top-level
``sparsity=`` turns on the SparsityHook (unit tests, then through
tools/train.py, tools/test.py and tools/search.py)."""
import glob
import logging
import os
import subprocess

import pytest
import torch
from mmengine.config import Config

from helpers import BASELINE, PY, ROOT, run_tool, tiny_cfg_options
from mmrazor_ext.engine.config_guard import (
    LegacyConfigError,
    apply_sparsity_key,
    check_legacy_keys,
    guard_config,
    known_keys,
    unread_keys,
    warn_unread_keys,
)
from mmrazor_ext.sparsity import SparsityConfigError

TOP_CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, 'configs', '**', '*.py'),
                                          recursive=True) if '_base_' not in p)
AMBA = dict(scheduler=dict(type='AmbaLevelPruneScheduler', kwargs=dict(
    total_iters=None, sparsity_table=[50], default_input_shape=[1, 1, 28, 28])))


def child(tmp_path, body, name='child.py', base=BASELINE):
    """A config inheriting ``base`` with ``body`` added."""
    path = tmp_path / name
    path.write_text(f'_base_ = [{base!r}]\n{body}\n')
    return str(path)


# mmcls-0.x key -> a value as old configs wrote it, and what the message names.
LEGACY = {
    'data': ("dict(samples_per_gpu=32, workers_per_gpu=2, "
             "train=dict(type='FashionMNIST', data_prefix='data/fmnist'))",
             ['train_dataloader', 'batch_size', 'num_workers', 'data_root',
              'train.data_prefix']),
    'resume_from': ("'work_dirs/x/epoch_3.pth'",
                    ['resume=True', 'load_from=PATH', '--resume PATH']),
    'optimizer_config': ('dict(grad_clip=None)', ['optim_wrapper', 'clip_grad']),
    'lr_config': ("dict(policy='step', step=[30, 60, 90])",
                  ['param_scheduler', 'MultiStepLR']),
    'runner': ("dict(type='EpochBasedRunner', max_epochs=100)",
               ['train_cfg', 'by_epoch=True', 'max_epochs']),
    'optimizer': ("dict(type='SGD', lr=0.1)", ['optim_wrapper=dict(optimizer=']),
    'evaluation': ("dict(interval=1, metric='accuracy')",
                   ['val_evaluator', 'val_interval']),
    'checkpoint_config': ('dict(interval=1)', ['default_hooks', 'CheckpointHook']),
    'log_config': ('dict(interval=100)', ['default_hooks', 'LoggerHook']),
    'workflow': ("[('train', 1)]", ['train_cfg', 'val_interval']),
}


@pytest.mark.parametrize('key', sorted(LEGACY))
def test_each_mmcls_key_is_rejected_naming_its_equivalent(tmp_path, key):
    value, names = LEGACY[key]
    cfg = Config.fromfile(child(tmp_path, f'{key} = {value}'))
    with pytest.raises(LegacyConfigError) as err:
        guard_config(cfg, 'tools/train.py')
    message = str(err.value)
    assert message.startswith('tools/train.py: ')
    assert f'\n  {key}: ' in message
    for name in names:
        assert name in message, name


def test_one_line_per_legacy_key_and_resume_from_with_resume():
    cfg = Config(dict(model=dict(), data=dict(samples_per_gpu=2),
                      lr_config=dict(policy='step'), resume_from=None))
    with pytest.raises(LegacyConfigError) as err:
        check_legacy_keys(cfg)
    lines = str(err.value).splitlines()[1:]
    assert [line.split(':')[0].strip() for line in lines] == [
        'data', 'resume_from', 'lr_config']
    # This project's Runner resumes from resume_from when resume=True.
    check_legacy_keys(Config(dict(resume=True, resume_from='x.pth')))


@pytest.mark.parametrize('path', TOP_CONFIGS,
                         ids=lambda p: os.path.relpath(p, ROOT))
def test_shipped_configs_pass_the_guard_without_warning(path):
    cfg = Config.fromfile(path)
    guard_config(cfg, 'test')
    assert unread_keys(cfg) == []


def test_unread_keys_are_warned_about(tmp_path, monkeypatch):
    # mmengine's logger keeps the stream it was created with, so earlier
    # tests decide where its output goes: record the call itself instead.
    import mmrazor_ext.engine.config_guard as guard
    logged = []
    monkeypatch.setattr(guard, 'print_log',
                        lambda msg, logger=None, level=logging.INFO:
                        logged.append((level, msg)))
    cfg = Config.fromfile(child(tmp_path, """
lr = 0.5  # a variable the config uses: fine
optim_wrapper = dict(optimizer=dict(lr=lr))
_private = 1
max_epoch = 3  # a typo of train_cfg.max_epochs
"""))
    cfg.merge_from_dict({'train_cfg.max_epochs': 2, 'leaf_module': ['X'],
                         'evalution': dict(interval=1)})
    assert warn_unread_keys(cfg, 'tools/train.py') == [
        'evalution', 'leaf_module', 'max_epoch']
    assert [level for level, _ in logged] == [logging.WARNING]
    assert 'evalution, leaf_module, max_epoch' in logged[0][1]
    # Runner.from_cfg's keys, mmengine's other keys and the project's.
    assert {'model', 'train_cfg', 'custom_hooks', 'default_scope',
            'experiment_name', 'model_wrapper_cfg', 'custom_imports',
            'load_strict', 'resume_from', 'sparsity'} <= known_keys()
    # A dumped config (variables written out as values) does not warn.
    dumped = tmp_path / 'dumped.py'
    Config.fromfile(BASELINE).dump(str(dumped))
    assert unread_keys(Config.fromfile(str(dumped))) == []


# --- sparsity= -------------------------------------------------------------------
def sparsity_hooks(cfg):
    return [h for h in cfg.get('custom_hooks', [])
            if h['type'].endswith('SparsityHook')]


def test_sparsity_key_becomes_a_sparsity_hook(tmp_path):
    cfg = Config.fromfile(child(tmp_path, f'sparsity = {AMBA!r}\n'
                                          "leaf_module = ['Identity']"))
    guard_config(cfg, 'test')
    assert 'sparsity' not in cfg and 'leaf_module' not in cfg
    (hook,) = sparsity_hooks(cfg)
    assert hook['sparsity_config'] == dict(AMBA, leaf_module=['Identity'])
    # UP's layout inside the key, and a YAML path beside the config.
    yaml_path = tmp_path / 'sparse.yaml'
    yaml_path.write_text('sparsity:\n  scheduler:\n    type: AmpereScheduler\n'
                         'leaf_module: [Identity]\n')
    for value in ("dict(sparsity=dict(scheduler=dict(type='AmpereScheduler')), "
                  "leaf_module=['Identity'])", "'sparse.yaml'"):
        cfg = apply_sparsity_key(
            Config.fromfile(child(tmp_path, f'sparsity = {value}')))
        (hook,) = sparsity_hooks(cfg)
        assert hook['sparsity_config'] == dict(
            scheduler=dict(type='AmpereScheduler'), leaf_module=['Identity'])
    # None trains dense; no key changes nothing.
    cfg = apply_sparsity_key(Config.fromfile(child(tmp_path, 'sparsity = None')))
    assert not sparsity_hooks(cfg) and 'sparsity' not in cfg
    assert not sparsity_hooks(apply_sparsity_key(Config.fromfile(BASELINE)))


@pytest.mark.parametrize('body, match', [
    ("sparsity = dict(scheduler=dict(type='AmbaLevelPruneScheduler', "
     "kwargs=dict(sparsity_table=[50], total_iters='ten')))",
     '^sparsity.scheduler.kwargs.total_iters: expected int'),
    ("sparsity = dict(schedular=dict(type='AmpereScheduler'))",
     '^sparsity.schedular: unknown key'),
    ('sparsity = 3', '^sparsity: must be a dict'),
    ("sparsity = dict(scheduler=dict(type='AmpereScheduler'), "
     "leaf_module=['A'])\nleaf_module = ['B']", 'leaf_module: given both'),
    ("sparsity = dict(scheduler=dict(type='AmpereScheduler'))\n"
     "custom_hooks = [dict(type='SparsityHook', sparsity_config=sparsity)]",
     'also has a SparsityHook'),
])
def test_bad_sparsity_key_names_the_key(tmp_path, body, match):
    with pytest.raises(SparsityConfigError, match=match):
        apply_sparsity_key(Config.fromfile(child(tmp_path, body)))


# --- through the tools -------------------------------------------------------------
def tool(name):
    return [PY, os.path.join(ROOT, 'tools', name)]


def run_failing(args):
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True,
                          timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS='1',
                                   PYTHONWARNINGS='ignore'))
    assert proc.returncode != 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def test_tools_reject_an_mmcls_key(tmp_path):
    cfg = child(tmp_path, "lr_config = dict(policy='step', step=[1])")
    work = tmp_path / 'work'
    for args in (tool('train.py') + [cfg, '--work-dir', str(work)],
                 tool('test.py') + [cfg, 'missing.pth', '--work-dir', str(work)],
                 tool('search.py') + [cfg, '--work-dir', str(work)]):
        log = run_failing(args)
        assert 'lr_config: an mmcv-1.x key' in log and 'param_scheduler' in log
    assert not os.path.exists(work)  # nothing was built
    # A key given with --cfg-options is checked too.
    log = run_failing(tool('train.py') + [BASELINE, '--work-dir', str(work),
                                          '--cfg-options', 'runner.max_epochs=1'])
    assert 'runner: an mmcv-1.x key' in log and 'train_cfg' in log


def test_train_with_a_sparsity_key_sparsifies(tmp_path, tiny_fmnist):
    cfg = child(tmp_path, f'sparsity = {AMBA!r}\nfoo_bar = 1')
    work = tmp_path / 'work'
    proc = run_tool(tool('train.py') + [cfg, '--work-dir', str(work)]
                    + tiny_cfg_options(tiny_fmnist))
    log = proc.stdout + proc.stderr
    assert 'config keys that nothing reads' in log and 'foo_bar' in log
    state = torch.load(work / 'epoch_1.pth', map_location='cpu',
                       weights_only=False)['state_dict']
    masks = {k: v for k, v in state.items()
             if k.endswith('weight_fake_sparse.mask')}
    assert len(masks) == 22  # every conv + fc of ResNet-20
    zeros = sum(int((~m).sum()) for m in masks.values())
    assert abs(zeros / sum(m.numel() for m in masks.values()) - 0.5) <= 0.015
    assert (work / 'sparse_ckpts' / 'global_sparse_rate_50.pth.tar').exists()
