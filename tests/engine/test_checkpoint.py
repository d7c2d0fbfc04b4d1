"""Checkpoints load with weights_only=True through an explicit allow-list,
for every scheme; models load strictly with a readable error
(engine/checkpoint.py)."""
import os
import pickle

import pytest
import torch
from torch import nn

from mmrazor_ext.engine import (
    CheckpointMismatchError,
    load_model_state,
    safe_globals,
    safe_load,
)


class _Evil:
    def __reduce__(self):
        return (os.system, ('echo pwned',))


def test_refuses_arbitrary_globals(tmp_path):
    path = tmp_path / 'evil.pth'
    torch.save({'x': _Evil()}, path)
    with pytest.raises(pickle.UnpicklingError, match='posix.system|os.system'):
        safe_load(str(path))


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='can not be found'):
        safe_load(str(tmp_path / 'nope.pth'))


def test_allow_list_has_no_code_execution_gadgets():
    names = {getattr(g, '__qualname__', str(g)) for g in safe_globals()}
    assert not names & {'getattr', 'eval', 'exec', 'system', '__import__'}


@pytest.mark.parametrize('url, error, message', [
    ('/no/such/file.pth', FileNotFoundError, 'checkpoint /no/such'),
    ('http://127.0.0.1:1/x.pth', OSError, 'cannot download checkpoint'),
    ('torchvision://no_such_net', KeyError, 'unknown torchvision model'),
    ('modelzoo://no_such_net', KeyError, 'unknown torchvision model'),
    ('open-mmlab://no_such_net', KeyError, 'unknown OpenMMLab model'),
    ('openmmlab://no_such_net', KeyError, 'unknown OpenMMLab model'),
    ('mmcls://no_such_net', KeyError, 'unknown mmcls model'),
    ('s3://bucket/x.pth', pickle.UnpicklingError, 'posix.system'),
    ('cluster:petrel://bucket/x.pth', pickle.UnpicklingError, 'posix.system'),
    ('pavi://model/x.pth', ValueError, "scheme 'pavi://' is not supported"),
])
def test_mmengine_dispatches_every_scheme_to_safe_loaders(
        url, error, message, monkeypatch):
    """mmengine's public entry point reaches this project's loaders (their
    messages), never its own unpickling ones."""
    import io
    from types import SimpleNamespace

    from mmengine import fileio
    from mmengine.runner.checkpoint import CheckpointLoader
    buf = io.BytesIO()
    torch.save({'x': _Evil()}, buf)
    monkeypatch.setattr(fileio, 'get_file_backend', lambda *a, **k:
                        SimpleNamespace(get=lambda name: buf.getvalue()))
    with pytest.raises(error, match=message):
        CheckpointLoader.load_checkpoint(url)


def test_unknown_scheme_is_named():
    with pytest.raises(ValueError, match=r"scheme 'gs://' is not supported"):
        safe_load('gs://bucket/x.pth')


def test_json_file_is_not_a_checkpoint(tmp_path):
    (tmp_path / 's.json').write_text('{"spaces": {}}')
    with pytest.raises(ValueError, match=r's\.json is a JSON / text file'):
        safe_load(str(tmp_path / 's.json'))


def test_strict_load_lists_mismatches_and_hints_pruned():
    big, small = nn.Sequential(nn.Linear(4, 8)), nn.Sequential(nn.Linear(4, 2))
    ckpt = {'state_dict': small.state_dict(),
            'meta': {'subnet': 'subnet.json'}}
    with pytest.raises(CheckpointMismatchError,
                       match=r'(?s)size mismatch 0\.weight: checkpoint 2x4, '
                             r'model 8x4.*pruned model.*load_subnet'):
        load_model_state(big, ckpt, 'work/pruned_model.pth')
    with pytest.raises(CheckpointMismatchError, match=r"missing in .*'0.bias'"):
        load_model_state(small, {'0.weight': torch.zeros(2, 4)}, 'x.pth')
    with pytest.raises(CheckpointMismatchError, match=r"unexpected.*'extra'"):
        load_model_state(small, dict(small.state_dict(), extra=torch.ones(1)))
    # module. prefixes are stripped; non-strict loads what fits
    load_model_state(small, {f'module.{k}': v
                             for k, v in small.state_dict().items()})
    load_model_state(big, ckpt, strict=False)
