"""Reliability suite (issue 17, README "Reliability"): no load path runs
code from a file, and no project code loads a pickle unsafely."""
import ast
import os
import pickle
from types import SimpleNamespace

import pytest
import torch

from helpers import BASELINE, ROOT
from helpers.data import make_cifar10
from helpers.reliability import Payload, eval_main, tool_args, train_main
from mmrazor_ext.datasets import CIFAR10, DatasetFormatError
from mmrazor_ext.engine import UnsafeCheckpointError, safe_load


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
        lambda e: eval_main([BASELINE, e.url, *tool_args(e, 't')]),
        UnsafeCheckpointError),
    'tools/train.py --cfg-options load_from=http://...': (
        lambda e: train_main([BASELINE, *tool_args(e, 'l'), f'load_from={e.url}']),
        UnsafeCheckpointError),
    'tools/train.py --resume http://...': (
        lambda e: train_main([BASELINE, '--resume', e.url, *tool_args(e, 'r')]),
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
