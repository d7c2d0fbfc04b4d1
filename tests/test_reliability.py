"""Reliability suite (issue 17): no load path runs code from a file, kill -9
+ ``--resume`` is bit-exact, bad inputs fail with named errors and write
nothing. README, section "Reliability", reports these counts."""
import ast
import functools
import http.server
import os
import pickle
import shutil
import subprocess
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import (
    ROOT,
    make_cifar10,
    make_fmnist,
    run_tool,
    tiny_cfg_options,
    write_idx,
)
from mmrazor_ext.datasets import CIFAR10, DatasetFormatError, FashionMNIST
from mmrazor_ext.engine import (
    CheckpointMismatchError,
    ConfigFieldError,
    UnsafeCheckpointError,
    safe_load,
)

PY = os.path.join(ROOT, '.venv', 'bin', 'python')
BASELINE = os.path.join(ROOT, 'configs/baselines/resnet20_1xb128_fashionmnist.py')
SEARCH = os.path.join(
    ROOT, 'configs/hybrid_search/hybrid_search_resnet20_1xb128_fashionmnist.py')


class Payload:
    """Unpickling this runs ``touch MARKER`` (a ``__reduce__`` payload)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def evil(tmp_path, monkeypatch, tiny_fmnist):
    """Malicious checkpoints on disk and on an HTTP server on 127.0.0.1."""
    marker = tmp_path / 'EXECUTED'
    serve = tmp_path / 'serve'
    serve.mkdir()
    torch.save({'state_dict': {}, 'meta': Payload(marker)}, serve / 'evil.pth')
    torch.save({'state_dict': {}, 'meta': Payload(marker)},
               serve / 'legacy.pth', _use_new_zipfile_serialization=False)
    (serve / 'raw.pkl').write_bytes(pickle.dumps({'x': Payload(marker)}))
    server = http.server.ThreadingHTTPServer(
        ('127.0.0.1', 0), functools.partial(_Quiet, directory=str(serve)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for var in ('NO_PROXY', 'no_proxy'):
        monkeypatch.setenv(var, '127.0.0.1,localhost')
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    monkeypatch.setenv('MMENGINE_HOME', str(tmp_path / 'mmengine_home'))
    os.makedirs(tmp_path / 'mmengine_home')
    shutil.copy(serve / 'evil.pth', tmp_path / 'mmengine_home' / 'evil.pth')
    url = f'http://127.0.0.1:{server.server_address[1]}/evil.pth'
    yield SimpleNamespace(marker=marker, dir=serve, url=url, tmp=tmp_path,
                          data=tiny_fmnist, monkeypatch=monkeypatch)
    server.shutdown()
    server.server_close()


def _patch_tables(e):
    from mmengine import fileio
    from mmengine.runner import checkpoint as mm
    e.monkeypatch.setattr(mm, 'get_torchvision_models',
                          lambda: {'evilnet': e.url})
    e.monkeypatch.setattr(mm, 'get_external_models', lambda: {
        'evil_url': e.url, 'evil_local': 'evil.pth'})
    e.monkeypatch.setattr(mm, 'get_mmcls_models', lambda: {'evil': e.url})
    data = (e.dir / 'evil.pth').read_bytes()
    e.monkeypatch.setattr(fileio, 'get_file_backend', lambda *a, **k:
                          SimpleNamespace(get=lambda name: data))


def _tool_args(e, work):
    return ['--work-dir', str(e.tmp / work), *tiny_cfg_options(e.data)]


def _train(argv):
    from tools.train import main
    main(argv)


def _test(argv):
    from tools.test import main
    main(argv)


def _pretrained_init(e):
    from mmengine.model import BaseModule
    model = BaseModule(init_cfg=dict(type='Pretrained', checkpoint=e.url))
    model.init_weights()


def _mmengine_loader(e):
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.load_checkpoint(e.url)


def _mmengine_load_checkpoint(e):
    from mmengine.runner import load_checkpoint
    load_checkpoint(torch.nn.Linear(1, 1), str(e.dir / 'evil.pth'))


def _model_loading(e):
    from mmrazor_ext.apis.model_loading import build_from_config
    build_from_config(BASELINE, e.url)


def _doctored_cifar(e):
    root = make_cifar10(str(e.tmp / 'cifar'), n_per_batch=4)
    path = os.path.join(root, 'cifar-10-batches-py', 'data_batch_1')
    with open(path, 'wb') as f:
        pickle.dump({'data': Payload(e.marker), 'labels': [0]}, f)
    CIFAR10(data_root=root, split='train', verify_md5=False, pipeline=[])


# name -> (call with the fixture, expected error)
LOAD_PATHS = {
    'local file (zip format)': (
        lambda e: safe_load(str(e.dir / 'evil.pth')), UnsafeCheckpointError),
    'local file (legacy format)': (
        lambda e: safe_load(str(e.dir / 'legacy.pth')), UnsafeCheckpointError),
    'local raw pickle': (
        lambda e: safe_load(str(e.dir / 'raw.pkl')), UnsafeCheckpointError),
    'http:// URL': (lambda e: safe_load(e.url), UnsafeCheckpointError),
    'mmengine CheckpointLoader (http)': (_mmengine_loader,
                                         UnsafeCheckpointError),
    'mmengine load_checkpoint(model, path)': (_mmengine_load_checkpoint,
                                              UnsafeCheckpointError),
    "init_cfg=dict(type='Pretrained', checkpoint=URL)": (
        _pretrained_init, UnsafeCheckpointError),
    'torchvision://': (lambda e: safe_load('torchvision://evilnet'),
                       UnsafeCheckpointError),
    'modelzoo://': (lambda e: safe_load('modelzoo://evilnet'),
                    UnsafeCheckpointError),
    'open-mmlab:// (URL)': (lambda e: safe_load('open-mmlab://evil_url'),
                            UnsafeCheckpointError),
    'openmmlab:// ($MMENGINE_HOME file)': (
        lambda e: safe_load('openmmlab://evil_local'), UnsafeCheckpointError),
    'mmcls://': (lambda e: safe_load('mmcls://evil'), UnsafeCheckpointError),
    's3:// (file backend bytes)': (
        lambda e: safe_load('s3://bucket/evil.pth'), UnsafeCheckpointError),
    'pavi:// (refused)': (lambda e: safe_load('pavi://x/evil.pth'),
                          ValueError),
    'ftp:// (refused)': (lambda e: safe_load('ftp://host/evil.pth'),
                         ValueError),
    'tools/test.py CONFIG http://...': (
        lambda e: _test([BASELINE, e.url, *_tool_args(e, 't')]),
        UnsafeCheckpointError),
    'tools/train.py --cfg-options load_from=http://...': (
        lambda e: _train([BASELINE, *_tool_args(e, 'l'), f'load_from={e.url}']),
        UnsafeCheckpointError),
    'tools/train.py --resume http://...': (
        lambda e: _train([BASELINE, '--resume', e.url, *_tool_args(e, 'r')]),
        UnsafeCheckpointError),
    'apis.model_loading.build_from_config(CONFIG, URL)': (
        _model_loading, UnsafeCheckpointError),
    'CIFAR10(verify_md5=False) batch file': (_doctored_cifar,
                                             DatasetFormatError),
}


@pytest.mark.parametrize('name', list(LOAD_PATHS))
def test_no_load_path_executes_code(evil, name):
    call, error = LOAD_PATHS[name]
    _patch_tables(evil)
    with pytest.raises(error) as info:
        call(evil)
    assert not evil.marker.exists(), f'{name}: the payload ran'
    msg = str(info.value)
    assert 'posix.system' in msg or 'scheme' in msg or 'Unsupported' in msg
    assert 'weights_only=False' not in msg and 'weights_only` set to' \
        not in msg


def test_no_torch_load_without_weights_only():
    """Every torch.load / pickle load in the project's code is safe."""
    offenders = []
    for top in ('mmrazor_ext', 'tools', 'examples'):
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                if not name.endswith('.py'):
                    continue
                path = os.path.join(folder, name)
                tree = ast.parse(open(path, encoding='utf-8').read())
                for node in ast.walk(tree):
                    if not isinstance(node, ast.Call):
                        continue
                    func = ast.unparse(node.func)
                    kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
                    if func.endswith('torch.load') and \
                            kw.get('weights_only') != 'True':
                        offenders.append(f'{path}:{node.lineno}')
                    if func in ('pickle.load', 'pickle.loads', 'np.load',
                                'load_state_dict_from_url') and \
                            not path.endswith('formats.py'):
                        offenders.append(f'{path}:{node.lineno} {func}')
    assert not offenders, offenders


# -- resume: kill -9 and --resume equal the uninterrupted run ------------------
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


# -- bad inputs: named errors, nothing written ---------------------------------
def _pruned_checkpoint(path):
    from mmrazor_ext.apis.model_loading import build_from_config
    _, model, _ = build_from_config(BASELINE)
    state = model.state_dict()
    for k in list(state):
        if '.conv1.' in k and 'layer' in k:
            state[k] = state[k][:state[k].shape[0] // 2]
        elif '.bn1.' in k and 'layer' in k and state[k].dim():
            state[k] = state[k][:state[k].shape[0] // 2]
        elif '.conv2.' in k and 'layer' in k:
            state[k] = state[k][:, :state[k].shape[1] // 2]
    torch.save({'state_dict': state, 'meta': {
        'subnet': 'subnet.json', 'algorithm': 'OneShotPruning'}}, path)


def _bad_test_tool(e, checkpoint):
    out = e.tmp / 'metrics.json'
    try:
        _test([BASELINE, str(checkpoint), '--out', str(out),
               *_tool_args(e, 'test')])
    finally:
        assert not out.exists()


def _bad_pruned(e):
    _pruned_checkpoint(e.tmp / 'pruned_model.pth')
    _bad_test_tool(e, e.tmp / 'pruned_model.pth')


def _bad_json_checkpoint(e):
    (e.tmp / 'subnet.json').write_text('{"format": "subnet"}')
    _bad_test_tool(e, e.tmp / 'subnet.json')


def _fmnist(e, **change):
    root = make_fmnist(str(e.tmp / 'fm'), n_train=16, n_test=4)
    for name, fn in change.items():
        fn(os.path.join(root, name.replace('_', '-')))
    FashionMNIST(data_root=root, split='train', pipeline=[])


def _bad_cifar_shape(e):
    root = make_cifar10(str(e.tmp / 'cifar'), n_per_batch=4)
    with open(os.path.join(root, 'cifar-10-batches-py', 'data_batch_2'),
              'wb') as f:
        pickle.dump({'data': np.zeros((4, 100), np.uint8),
                     'labels': [0] * 4}, f)
    CIFAR10(data_root=root, split='train', verify_md5=False, pipeline=[])


def _sparsity_fractions(e):
    from mmrazor_ext.sparsity import build_sparse_scheduler
    build_sparse_scheduler(dict(scheduler=dict(
        type='AmbaLevelPruneScheduler',
        kwargs=dict(total_iters=9, sparsity_table=[0.3, 0.5, 0.7]))))


def _report_json(e):
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        'sparsity_report', os.path.join(ROOT, 'tools/analysis/'
                                        'sparsity_report.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    (e.tmp / 'subnet.json').write_text('{"format": "subnet"}')
    try:
        mod.main([str(e.tmp / 'subnet.json'), '--json', str(e.tmp / 'r.json')])
    finally:
        assert not (e.tmp / 'r.json').exists()


def _search_option(e, option):
    from tools.search import main
    wd = e.tmp / 'search'
    try:
        main([SEARCH, '--workers', '2', '--work-dir', str(wd),
              '--cfg-options', option])
    finally:
        assert not wd.exists()


def _train_option(e, option):
    wd = e.tmp / 'train'
    try:
        _train([BASELINE, *_tool_args(e, 'train'), option])
    finally:
        assert not wd.exists()


def _truncate(path):
    data = open(path, 'rb').read()
    open(path, 'wb').write(data[:-100])


def _bad_magic(path):
    data = bytearray(open(path, 'rb').read())
    data[2] = 0x0D  # float32 instead of uint8
    open(path, 'wb').write(bytes(data))


# name -> (call, expected error, regex the message must match)
BAD_INPUTS = {
    'pruned checkpoint on the dense config (tools/test.py)': (
        _bad_pruned, CheckpointMismatchError,
        r'(?s)size mismatch backbone\.layer1\.0\.conv1\.weight: checkpoint '
        r'8x16x3x3, model 16x16x3x3.*pruned model.*load_subnet'),
    'subnet JSON as checkpoint (tools/test.py)': (
        _bad_json_checkpoint, ValueError,
        r'subnet\.json is a JSON / text file, not a PyTorch checkpoint'),
    'IDX labels fewer than images': (
        lambda e: _fmnist(e, train_labels_idx1_ubyte=lambda p: write_idx(
            p, np.zeros(10, np.uint8))), DatasetFormatError,
        r'train-images-idx3-ubyte holds 16 images but .*'
        r'train-labels-idx1-ubyte 10 labels'),
    'truncated IDX file': (
        lambda e: _fmnist(e, train_images_idx3_ubyte=_truncate),
        DatasetFormatError, r'train-images-idx3-ubyte: \d+ bytes, expected'),
    'IDX file with a wrong magic': (
        lambda e: _fmnist(e, train_images_idx3_ubyte=_bad_magic),
        DatasetFormatError, r'train-images-idx3-ubyte: IDX of float32'),
    'CIFAR batch of the wrong shape': (
        _bad_cifar_shape, DatasetFormatError,
        r'data_batch_2: "data" must be a uint8 array of shape \(N, 3072\)'),
    'sparsity_table=[0.3, 0.5, 0.7] (fractions)': (
        _sparsity_fractions, ValueError,
        r"sparsity_table: \[0\.3, 0\.5, 0\.7\] looks like fractions.*"
        r"sparsity_unit='fraction'"),
    'sparsity_report.py subnet.json': (
        _report_json, SystemExit,
        r'subnet\.json is a JSON / text file, not a PyTorch checkpoint'),
    'train_cfg.n_trials=abc (tools/search.py)': (
        lambda e: _search_option(e, 'train_cfg.n_trials=abc'), SystemExit,
        r"train_cfg\.n_trials must be an integer >= 1, got 'abc' \(str\)"),
    'train_cfg.n_trials=0 (tools/search.py)': (
        lambda e: _search_option(e, 'train_cfg.n_trials=0'), SystemExit,
        r'train_cfg\.n_trials must be an integer >= 1, got 0'),
    'train_dataloader.batch_size=abc (tools/train.py)': (
        lambda e: _train_option(e, 'train_dataloader.batch_size=abc'),
        ConfigFieldError,
        r"train_dataloader\.batch_size must be an integer >= 1, got 'abc'"),
}


@pytest.mark.parametrize('name', list(BAD_INPUTS))
def test_bad_input_named_error(evil, name):
    call, error, pattern = BAD_INPUTS[name]
    with pytest.raises(error, match=pattern) as info:
        call(evil)
    assert 'weights_only=False' not in str(info.value)


def test_non_strict_opt_out_loads_matching_tensors(evil):
    _pruned_checkpoint(evil.tmp / 'pruned_model.pth')
    out = evil.tmp / 'metrics.json'
    _test([BASELINE, str(evil.tmp / 'pruned_model.pth'), '--non-strict',
           '--out', str(out), *_tool_args(evil, 'test')])
    assert out.exists()


# -- search: killed trials are re-queued, workers stop at exactly n_trials ----
def _searcher(url, heartbeat_interval=1):
    from mmrazor_ext.search.optuna_searcher import OptunaSearcher, ratio_grid
    return OptunaSearcher(['a', 'b'], ratio_grid(0.2, 1.0, 0.2), storage=url,
                          sampler=dict(type='random', seed=0),
                          heartbeat_interval=heartbeat_interval)


def _objective(p):
    return {'top1': sum(p.values()), 'flops': 1, 'params': 1}


def test_trial_killed_before_heartbeat_is_requeued(tmp_path):
    import time

    from optuna.trial import TrialState
    url = f'sqlite:///{tmp_path}/search.db'
    s = _searcher(url)
    s.enqueue([{'a': 0.4, 'b': 0.4}, {'a': 0.6, 'b': 0.6},
               {'a': 0.8, 'b': 0.8}])
    s.optimize(_objective, lambda p: 0.5, 2, progress=False)
    orphan = s.study.ask()  # a process killed right after creating it
    time.sleep(1.2)         # older than heartbeat_interval, no heartbeat
    s = _searcher(url)
    s.optimize(_objective, lambda p: 0.5, 4, progress=False)
    trials = s.study.get_trials()
    assert trials[orphan.number].state == TrialState.FAIL
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    done = s.completed()
    assert len(done) == 4
    retried = [t for t in done if t.system_attrs.get('failed_trial')
               == orphan.number]
    assert retried and retried[0].params == {'a': 0.8, 'b': 0.8}


def test_workers_stop_at_exactly_n_trials(tmp_path):
    """Trials running in other workers count: the one that would exceed
    n_trials is pruned without evaluation and its worker stops."""
    from optuna.trial import TrialState
    url = f'sqlite:///{tmp_path}/search.db'
    s = _searcher(url, heartbeat_interval=600)
    s.optimize(_objective, lambda p: 0.5, 2, progress=False)
    others = [s.study.ask(), s.study.ask()]  # still running elsewhere
    calls = []
    s.optimize(lambda p: calls.append(p) or _objective(p), lambda p: 0.5, 4,
               progress=False)
    assert calls == []  # 2 done + 2 running = 4: nothing more to evaluate
    pruned = [t for t in s.study.get_trials() if t.state == TrialState.PRUNED]
    assert len(pruned) == 1
    for t in others:
        s.study.tell(t, [1.0, 1.0])
    assert len(s.completed()) == 4
    with pytest.raises(ValueError, match=r"n_trials must be an integer >= 1, "
                                         r"got 'abc'"):
        s.optimize(_objective, lambda p: 0.5, 'abc', progress=False)
