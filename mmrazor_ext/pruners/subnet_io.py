"""Saved subnets: the JSON file that rebuilds a pruned model.

Format (``format: mmrazor_ext.subnet``, ``version: 2``)::

    {"format": "mmrazor_ext.subnet", "version": 2,
     "example_inputs": [{"shape": [1, 3, 32, 32], "dtype": "torch.float32"}],
     "ignore_layers": [...],
     "spaces": {"<space>": {"num_channels": 16, "kept": [0, 3, ...]}},
     "bn_folded": false, "meta": {},
     "weights": "subnet.pth"}          # optional, next to the JSON

This is the channel-only form of the one saved format
(:mod:`mmrazor_ext.pruners.pruned_model` adds optional depth steps).

Reading validates everything before any model is built; every error is a
:class:`SubnetFileError` (a ``ValueError``) naming the file and the field.
Version 1 files (the same without ``bn_folded`` / ``meta``) still load.
Weights named by the file must lie in the JSON's folder (a caller may pass
any other path explicitly) and are read with the project's safe loader.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from mmrazor_ext.graph import ExportError
from mmrazor_ext.utils.io import atomic_torch_save, atomic_write_json

__all__ = ['SUBNET_FORMAT', 'SUBNET_VERSION', 'SubnetFileError',
           'READ_VERSIONS', 'subnet_record', 'write_subnet', 'read_json',
           'check_subnet', 'read_subnet',
           'example_inputs_of', 'kept_masks', 'weights_path',
           'load_weights']

SUBNET_FORMAT = 'mmrazor_ext.subnet'
#: version written everywhere (the one saved format, also
#: ``ChannelPruner.save_subnet``); version 1 files (no ``bn_folded`` /
#: ``meta``) are still read. Version 2 may add depth steps around the same
#: ``spaces`` / ``weights`` fields.
SUBNET_VERSION = 2
READ_VERSIONS = (1, 2)


class SubnetFileError(ValueError):
    """A saved subnet file is malformed or does not fit the model."""


def subnet_record(subnet: Mapping[str, torch.Tensor], spaces: Mapping,
                  example_inputs: Sequence[torch.Tensor],
                  ignore_layers: Sequence[str]) -> dict:
    """The JSON-ready description of ``subnet`` (bool keep masks)."""
    return {
        'format': SUBNET_FORMAT, 'version': SUBNET_VERSION,
        'example_inputs': [{'shape': list(x.shape), 'dtype': str(x.dtype)}
                           for x in example_inputs],
        'ignore_layers': list(ignore_layers),
        'spaces': {name: {'num_channels': spaces[name].num_channels,
                          'kept': m.nonzero().reshape(-1).tolist()}
                   for name, m in subnet.items()},
        'bn_folded': False, 'meta': {},
    }


def write_subnet(path: str, data: dict,
                 state: Mapping[str, torch.Tensor] | None = None) -> str:
    """Write ``data`` as JSON to ``path`` and, if given, the state dict to
    ``<path without .json>.pth`` (named in ``data['weights']``); weights
    first, each file atomically, so the JSON never names a missing file.

    The weights file is the same container as every pruned-model file
    (``{'state_dict', 'subnet', 'meta'}``), so it alone rebuilds the model."""
    if state is not None:
        wpath = os.path.splitext(path)[0] + '.pth'
        atomic_torch_save(wpath, {'state_dict': dict(state),
                                  'subnet': dict(data),
                                  'meta': dict(data.get('meta') or {})})
        data = dict(data, weights=os.path.basename(wpath))
    atomic_write_json(path, data)
    return path


def _fail(path: str, msg: str) -> SubnetFileError:
    return SubnetFileError(f'{path}: {msg}')


def _field(obj: Any, key: str, typ: type | tuple, where: str, path: str):
    if not isinstance(obj, dict) or key not in obj:
        raise _fail(path, f'{where} has no {key!r} field')
    value = obj[key]
    if not isinstance(value, typ) or isinstance(value, bool):
        raise _fail(path, f'{where}[{key!r}] must be '
                    f'{getattr(typ, "__name__", typ)}, got {value!r:.60}')
    return value


def _check_kept(kept: list, n: int, where: str, path: str) -> None:
    """``kept``: unique, non-negative integer indices below ``n``."""
    seen = set()
    for i in kept:
        if isinstance(i, bool) or not isinstance(i, int):
            raise _fail(path, f"{where}['kept']: {i!r} is not an integer "
                        'channel index')
        if not 0 <= i < n:
            raise _fail(path, f"{where}['kept']: index {i} is out of range "
                        f'for {n} channels (must be in [0, {n}))')
        if i in seen:
            raise _fail(path, f"{where}['kept']: index {i} appears twice")
        seen.add(i)
    if not kept:
        raise _fail(path, f"{where}['kept'] is empty: a space must keep at "
                    'least one channel')


def read_json(path: str) -> Any:
    """Parse a JSON file; a truncated / non-UTF-8 file is a
    :class:`SubnetFileError` naming it."""
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise _fail(path, f'not a valid JSON file ({err}); is it '
                    'truncated?') from err


def check_subnet(data: Any, path: str) -> dict:
    """Validate a parsed subnet structure (any readable version).

    Raises:
        SubnetFileError: Another format or version, or a missing /
            malformed field (``spaces``, ``num_channels``, ``kept`` indices
            that are not unique in-range integers, ``ignore_layers``,
            ``weights``).
    """
    if not isinstance(data, dict) or data.get('format') != SUBNET_FORMAT:
        raise _fail(path, f'not a saved subnet (format {SUBNET_FORMAT!r})')
    version = data.get('version', SUBNET_VERSION)
    if isinstance(version, bool) or version not in READ_VERSIONS:
        raise _fail(path, f'version {version!r} is not supported (this '
                    f'code reads versions {list(READ_VERSIONS)})')
    spaces = _field(data, 'spaces', dict, 'the file', path)
    for name, entry in spaces.items():
        where = f'spaces[{name!r}]'
        n = _field(entry, 'num_channels', int, where, path)
        kept = _field(entry, 'kept', list, where, path)
        _check_kept(kept, n, where, path)
    ignore = data.get('ignore_layers', [])
    if not isinstance(ignore, list) or \
            not all(isinstance(s, str) for s in ignore):
        raise _fail(path, "'ignore_layers' must be a list of layer names")
    if data.get('weights') is not None:
        _field(data, 'weights', str, 'the file', path)
    return data


def read_subnet(path: str) -> dict:
    """Load and validate a saved subnet file whose structure is channel
    slicing only (what :func:`~mmrazor_ext.pruners.load_subnet` rebuilds).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        SubnetFileError: See :func:`read_json` and :func:`check_subnet`;
            also a version 2 file that removes / merges blocks or folds BN.
    """
    data = check_subnet(read_json(path), path)
    if data.get('removed_blocks') or data.get('merged_blocks') or \
            data.get('bn_folded'):
        raise _fail(path, 'the model also removes / merges blocks or folds '
                    'BN: rebuild it with '
                    'mmrazor_ext.algorithms.load_pruned_model')
    return data


def example_inputs_of(data: dict, path: str) -> tuple[torch.Tensor, ...]:
    """Random inputs of the saved example shapes / dtypes."""
    entries = _field(data, 'example_inputs', list, 'the file', path)
    res = []
    for i, e in enumerate(entries):
        where = f'example_inputs[{i}]'
        shape = _field(e, 'shape', list, where, path)
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                   for d in shape):
            raise _fail(path, f"{where}['shape'] must be non-negative "
                        f'integers, got {shape!r:.60}')
        name = _field(e, 'dtype', str, where, path)
        dtype = getattr(torch, name.split('.')[-1], None)
        if not isinstance(dtype, torch.dtype):
            raise _fail(path, f"{where}['dtype']: {name!r} is not a torch "
                        'dtype')
        x = torch.zeros(shape, dtype=dtype)
        res.append(torch.randn(x.shape) if x.is_floating_point() else x)
    return tuple(res)


def kept_masks(data: dict, spaces: Mapping, path: str
               ) -> dict[str, torch.Tensor]:
    """``{space: bool keep mask}`` of a validated file, checked against
    the model's ``spaces``."""
    res = {}
    for name, entry in data['spaces'].items():
        space = spaces.get(name)
        if space is None or space.num_channels != entry['num_channels']:
            raise _fail(path, f'space {name!r} does not match the model '
                        f'(saved {entry["num_channels"]} channels, model '
                        f'has {None if space is None else space.num_channels})')
        mask = torch.zeros(space.num_channels, dtype=torch.bool)
        mask[torch.tensor(entry['kept'], dtype=torch.long)] = True
        res[name] = mask
    return res


def weights_path(data: dict, path: str, weights: str | None = None
                 ) -> str | None:
    """The weights file to load: ``weights`` if the caller gives one (any
    location), else the file's ``weights`` entry, which must be a relative
    path inside the JSON's folder."""
    if weights is not None:
        return weights
    name = data.get('weights')
    if not name:
        return None
    folder = os.path.dirname(os.path.abspath(path))
    target = os.path.normpath(os.path.join(folder, name))
    if os.path.isabs(name) or \
            os.path.commonpath([folder, target]) != folder:
        raise _fail(path, f"'weights' {name!r} is not inside the file's "
                    f'folder {folder}; pass weights=... to load_subnet to '
                    'load a file from elsewhere')
    return target


def load_weights(module: nn.Module, wpath: str) -> None:
    """Load a saved state dict (safe loader, strict keys) into ``module``."""
    # imported on use: engine's hooks / loops import the pruners package
    from mmrazor_ext.engine.checkpoint import safe_load
    state = safe_load(wpath)
    if isinstance(state, dict) and isinstance(state.get('state_dict'), dict):
        state = state['state_dict']
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ExportError(f'{wpath}: weights do not fit the rebuilt model '
                          f'(missing {missing[:5]}, unexpected '
                          f'{unexpected[:5]})')
