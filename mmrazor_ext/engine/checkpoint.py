"""Safe checkpoint loading: ``weights_only=True`` with an explicit allow-list.

torch >= 2.6 loads with ``weights_only=True`` by default, and mmengine 0.10.7
calls ``torch.load`` without listing the non-tensor globals its own
checkpoints contain (message-hub history buffers, numpy scalars), so
``--resume`` fails. Instead of turning the safety off we allow exactly those
globals, inside a context manager so nothing leaks into other code, and
replace mmengine's local-file loader with this one.
"""
import os.path as osp
import pickle
from collections.abc import Iterable

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader

# Globals found in checkpoints written by this project through mmengine's
# CheckpointHook (see tests/test_checkpoint.py, which fails when a new one
# appears). numpy arrays inside HistoryBuffer pickle through these.
_SAFE_GLOBALS: list = [
    HistoryBuffer,
    np._core.multiarray._reconstruct,
    np._core.multiarray.scalar,
    np.ndarray,
    np.dtype,
    np.dtypes.Float64DType,
    np.dtypes.Float32DType,
    np.dtypes.Int64DType,
]


def add_safe_globals(objs: Iterable) -> None:
    """Allow more globals in checkpoints loaded by :func:`safe_load`.

    Args:
        objs: Classes or functions that a checkpoint of yours pickles.
    """
    for obj in objs:
        if obj not in _SAFE_GLOBALS:
            _SAFE_GLOBALS.append(obj)


def safe_globals() -> list:
    """The current allow-list (a copy)."""
    return list(_SAFE_GLOBALS)


def safe_load(filename: str, map_location='cpu'):
    """``torch.load(weights_only=True)`` with the project's allow-list.

    Raises:
        FileNotFoundError: ``filename`` does not exist.
        pickle.UnpicklingError: the file holds a global outside the list;
            the message names it and how to allow it.
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint {filename} can not be found.')
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(filename, map_location=map_location,
                              weights_only=True)
    except pickle.UnpicklingError as err:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(filename)
        raise pickle.UnpicklingError(
            f'{filename} contains globals not on the allow-list: {unsafe}. '
            'If you trust the file, allow them with '
            'mmrazor_ext.engine.add_safe_globals([...]) before loading.'
        ) from err


def _history_buffer_getstate(self) -> dict:
    # mmengine pickles HistoryBuffer's class-level table of statistics
    # methods, i.e. functions reached through ``builtins.getattr``, which
    # weights_only loading must refuse. The table is rebuilt at import time
    # (custom methods are registered by the code defining them), so only the
    # buffer's data is stored.
    state = dict(self.__dict__)
    state.pop('statistics_methods', None)
    return state


HistoryBuffer.__getstate__ = _history_buffer_getstate

# Replace mmengine's loader for local paths (prefix '') so Runner.resume and
# load_from go through the allow-list.
CheckpointLoader.register_scheme(prefixes='', force=True)(safe_load)
