"""Checkpoints load with weights_only=True through an explicit allow-list."""
import os
import pickle

import pytest
import torch

from mmrazor_ext.engine import safe_globals, safe_load


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


def test_mmengine_loader_is_replaced():
    from mmengine.runner.checkpoint import CheckpointLoader
    loader = CheckpointLoader._get_checkpoint_loader('/some/local/file.pth')
    assert loader is safe_load
