"""Safe checkpoint loading for every scheme, and strict model loading.

Every checkpoint the project reads goes through :func:`safe_load`:
``torch.load(weights_only=True)`` with an explicit allow-list of the
non-tensor globals mmengine's own checkpoints contain (message-hub history
buffers, numpy scalars). Nothing is unpickled with code execution, whatever
the source:

* a local path;
* ``http://`` / ``https://``: downloaded to torch's hub cache
  (``$TORCH_HOME/hub/checkpoints``), then loaded like a local file;
* ``torchvision://`` / ``modelzoo://``, ``open-mmlab://`` / ``openmmlab://``
  and ``mmcls://``: mmengine's model-name tables map the name to a URL (or a
  file under ``$MMENGINE_HOME``), which is then loaded as above;
* ``s3://`` / ``petrel://`` (optionally ``name:s3://``): bytes fetched with
  mmengine's file backend, then loaded from memory with the same checks;
* anything else (``pavi://``, ``ftp://``, ``gs://`` ...): refused with an
  error naming the scheme.

These loaders replace mmengine's (which unpickle URLs through
``torch.hub.load_state_dict_from_url`` without ``weights_only``) in
``CheckpointLoader``, so ``load_from``, ``--resume``, ``init_cfg=Pretrained``
and ``mmengine.runner.load_checkpoint`` all use them.

:func:`load_model_state` loads a state dict into a model strictly: a missing,
unexpected or differently shaped tensor is a :class:`CheckpointMismatchError`
listing the first offending keys and shapes (with a hint when the file holds
a pruned model), instead of mmengine's warnings and a random network.
"""
from __future__ import annotations

import io
import os
import os.path as osp
import pickle
import re
from collections.abc import Iterable

import numpy as np
import torch
from mmengine.logging import print_log
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.runner import checkpoint as mm_checkpoint
from mmengine.runner.checkpoint import CheckpointLoader

__all__ = [
    'CheckpointMismatchError', 'UnsafeCheckpointError', 'add_safe_globals',
    'load_model_state', 'safe_globals', 'safe_load', 'SUPPORTED_SCHEMES'
]

# Globals found in checkpoints written by this project through mmengine's
# CheckpointHook (see tests/tools/test_train.py::
# test_checkpoint_needs_only_allow_listed_globals, which fails when a new one
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

SUPPORTED_SCHEMES = ('local path', 'http://', 'https://', 'torchvision://',
                     'modelzoo://', 'open-mmlab://', 'openmmlab://',
                     'mmcls://', 's3://', 'petrel://')
_URL = re.compile(r'^([A-Za-z][A-Za-z0-9+.-]*):(//)?')
# A torch file is a zip archive (torch >= 1.6) or a legacy pickle stream.
_ZIP_MAGIC = b'PK\x03\x04'


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint refers to code outside the allow-list (never executed)."""


class CheckpointMismatchError(RuntimeError):
    """A checkpoint does not fit the model it is loaded into."""


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


# -- loading bytes safely ------------------------------------------------------
def _check_format(head: bytes, name: str) -> None:
    if head.startswith(_ZIP_MAGIC) or head[:1] == b'\x80':
        return
    text = head.lstrip()[:1]
    kind = 'a JSON / text file' if text in (b'{', b'[', b'"') or \
        head[:64].isascii() else 'not a PyTorch file'
    raise ValueError(
        f'{name} is {kind}, not a PyTorch checkpoint (no zip or pickle '
        'header). Pass the .pth written by training / export; a subnet '
        'JSON is read with mmrazor_ext.pruners.load_subnet.')


def _torch_load(source, name: str, map_location):
    """``torch.load(weights_only=True)`` of a path or a byte buffer."""
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(source, map_location=map_location,
                              weights_only=True)
    except pickle.UnpicklingError as err:
        unsafe = _unsafe_globals(source, err)
        if not unsafe:
            why = re.search(r'WeightsUnpickler error:\s*(.+?)\n\n', str(err),
                            re.S)
            first = why.group(1).strip() if why else \
                (str(err).splitlines() or [''])[-1][:300]
            raise UnsafeCheckpointError(
                f'{name} cannot be loaded with weights_only=True ({first}); '
                'nothing from it was executed.') from None
        raise UnsafeCheckpointError(
            f'{name} refers to globals not on the allow-list: {unsafe}; '
            'nothing from it was executed. If you trust the file, allow '
            'them with mmrazor_ext.engine.add_safe_globals([...]) before '
            'loading.') from None
    except (RuntimeError, EOFError) as err:
        raise RuntimeError(f'{name}: cannot read the checkpoint ({err})'
                           ) from None


def _unsafe_globals(source, err) -> str:
    try:
        if isinstance(source, io.BytesIO):
            source.seek(0)
        found = torch.serialization.get_unsafe_globals_in_checkpoint(source)
        if found:
            return ', '.join(found)
    except Exception:  # noqa: BLE001 - legacy format: use torch's message
        pass
    match = re.search(r'GLOBAL ([\w.]+)', str(err))
    return match.group(1) if match else ''


def _load_local(filename: str, map_location='cpu'):
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint {filename} can not be found.')
    with open(filename, 'rb') as f:
        _check_format(f.read(64), filename)
    return _torch_load(filename, filename, map_location)


def _load_bytes(data: bytes, name: str, map_location='cpu'):
    _check_format(data[:64], name)
    return _torch_load(io.BytesIO(data), name, map_location)


# -- schemes -------------------------------------------------------------------
def _cache_path(url: str) -> str:
    from urllib.parse import urlparse
    name = osp.basename(urlparse(url).path) or 'checkpoint.pth'
    folder = osp.join(torch.hub.get_dir(), 'checkpoints')
    os.makedirs(folder, exist_ok=True)
    return osp.join(folder, name)


def _download(url: str) -> str:
    """Download ``url`` into the hub cache once; the cached path."""
    path = _cache_path(url)
    if not osp.isfile(path):
        print_log(f'Downloading {url} to {path}', logger='current')
        try:
            # writes a temp file next to ``path`` and renames it at the end
            torch.hub.download_url_to_file(url, path, progress=False)
        except Exception as err:
            raise OSError(f'cannot download checkpoint {url}: {err}') from err
    return path


def load_from_http(filename: str, map_location='cpu'):
    """Download (rank 0 first, once per cache) and load safely."""
    from mmengine.dist import barrier, get_dist_info
    rank, world = get_dist_info()
    if rank == 0:
        path = _download(filename)
    if world > 1:
        barrier()
        if rank > 0:
            path = _download(filename)
    return _load_local(path, map_location)


def load_from_torchvision(filename: str, map_location='cpu'):
    """``torchvision://NAME`` (or ``modelzoo://NAME``) through its URL."""
    name = filename.split('://', 1)[1]
    urls = mm_checkpoint.get_torchvision_models()
    if name not in urls:
        raise KeyError(f'{filename}: unknown torchvision model name {name!r}')
    return load_from_http(urls[name], map_location)


def _mmengine_home() -> str:
    return osp.expanduser(os.getenv('MMENGINE_HOME', osp.join(
        os.getenv('XDG_CACHE_HOME', '~/.cache'), 'mmengine')))


def load_from_openmmlab(filename: str, map_location='cpu'):
    """``open-mmlab://NAME``: a URL, or a file under ``$MMENGINE_HOME``."""
    name = filename.split('://', 1)[1]
    name = mm_checkpoint.get_deprecated_model_names().get(name, name)
    urls = mm_checkpoint.get_external_models()
    if name not in urls:
        raise KeyError(f'{filename}: unknown OpenMMLab model name {name!r}')
    url = urls[name]
    if url.startswith(('http://', 'https://')):
        return load_from_http(url, map_location)
    return _load_local(osp.join(_mmengine_home(), url), map_location)


def load_from_mmcls(filename: str, map_location='cpu'):
    """``mmcls://NAME``: the backbone weights of an mmcls model."""
    name = filename.split('://', 1)[1]
    urls = mm_checkpoint.get_mmcls_models()
    if name not in urls:
        raise KeyError(f'{filename}: unknown mmcls model name {name!r}')
    ckpt = load_from_http(urls[name], map_location)
    state = ckpt.get('state_dict', ckpt)
    return {'state_dict': {k[len('backbone.'):]: v for k, v in state.items()
                           if k.startswith('backbone.')}}


def load_from_ceph(filename: str, map_location='cpu'):
    """``s3://`` / ``petrel://``: bytes from mmengine's file backend."""
    from mmengine import fileio
    backend = fileio.get_file_backend(filename,
                                      backend_args={'backend': 'petrel'})
    return _load_bytes(backend.get(filename), filename, map_location)


def safe_load(filename: str, map_location='cpu'):
    """Load a checkpoint from a path or URL with ``weights_only=True``.

    Args:
        filename: Local path, ``http(s)://`` URL, ``torchvision://``,
            ``open-mmlab://``, ``mmcls://`` name or ``s3://`` path.
        map_location: As for ``torch.load``.

    Returns:
        The loaded object (usually a dict).

    Raises:
        FileNotFoundError: A local file does not exist.
        ValueError: The file is not a PyTorch checkpoint, or the scheme is
            not supported (the message names it).
        UnsafeCheckpointError: The file refers to a global outside the
            allow-list; it names it. Nothing was executed.
    """
    filename = str(filename)
    match = _URL.match(filename)
    if match is None or (len(match.group(1)) == 1 and os.name == 'nt'):
        return _load_local(filename, map_location)
    for prefixes, loader in _LOADERS:
        if re.match(prefixes, filename):
            return loader(filename, map_location)
    raise ValueError(
        f'checkpoint {filename}: the scheme {match.group(0)!r} is not '
        f'supported (supported: {", ".join(SUPPORTED_SCHEMES)}). Download '
        'the file and pass its local path.')


_LOADERS = [
    (r'https?://', load_from_http),
    (r'(torchvision|modelzoo)://', load_from_torchvision),
    (r'(open-mmlab|openmmlab)://', load_from_openmmlab),
    (r'mmcls://', load_from_mmcls),
    (r'(\S+:)?(s3|petrel)://', load_from_ceph),
]


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


def load_from_local(filename: str, map_location='cpu'):
    """mmengine's fallback prefix: local paths, and a refusal for unknown
    schemes (``pavi://``, ``ftp://`` ...) naming the scheme."""
    return safe_load(filename, map_location)


def _register_loaders() -> None:
    """Replace every loader mmengine registers (and the local one)."""
    table = [
        ('', load_from_local),
        (('http://', 'https://'), load_from_http),
        (('torchvision://', 'modelzoo://'), load_from_torchvision),
        (('open-mmlab://', 'openmmlab://'), load_from_openmmlab),
        ('mmcls://', load_from_mmcls),
        ('pavi://', load_from_local),
        ((r'(\S+\:)?s3://', r'(\S+\:)?petrel://'), load_from_ceph),
    ]
    for prefixes, loader in table:
        CheckpointLoader.register_scheme(prefixes=prefixes, force=True)(loader)


_register_loaders()


# -- loading into a model ------------------------------------------------------
def _pruned_hint(checkpoint, filename: str) -> str:
    meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
    subnet = (meta or {}).get('subnet') if isinstance(meta, dict) else None
    if subnet is None and isinstance(checkpoint, dict) and \
            isinstance(checkpoint.get('subnet'), dict):
        # the one pruned-model format (pruners/pruned_model.py)
        subnet = 'the mmrazor_ext.subnet structure stored in it'
        return (f'\nHint: {filename} holds a pruned model ({subnet}). '
                'Rebuild it with mmrazor_ext.algorithms.load_pruned_model('
                f"model, '{filename}') on a freshly built model of this "
                'config; or pass --non-strict to load only the matching '
                'tensors.')
    if subnet is None and isinstance(checkpoint, dict) and \
            'kmc_pruning' in checkpoint:
        subnet = 'the kmc_pruning structure stored in it'
    if subnet is None:
        return ''
    folder = osp.dirname(str(filename)) or '.'
    return (f'\nHint: {filename} holds a pruned model (subnet: {subnet}). '
            'Build the pruned structure first: a SubnetModel config '
            '(configs/hybrid_search/hybrid_train_*.py with --cfg-options '
            f'model.subnet={folder}/subnet.json), '
            'mmrazor_ext.pruners.load_subnet(model, '
            f"'{folder}/subnet.json') or MCPruning.load_pruned_model for "
            'AMC files; or pass --non-strict to load only the matching '
            'tensors.')


def _fmt_shape(t) -> str:
    return 'x'.join(str(d) for d in t.shape) if hasattr(t, 'shape') else '-'


def mismatch_report(model_state: dict, state: dict) -> tuple[list, list, list]:
    """Compare a model's state dict with a checkpoint's.

    Args:
        model_state: ``model.state_dict()``.
        state: The checkpoint's state dict.

    Returns:
        ``(size mismatches as (key, checkpoint shape, model shape), missing
        keys, unexpected keys)``.
    """
    sized = [(k, _fmt_shape(v), _fmt_shape(model_state[k]))
             for k, v in state.items() if k in model_state
             and hasattr(v, 'shape') and hasattr(model_state[k], 'shape')
             and tuple(v.shape) != tuple(model_state[k].shape)]
    missing = [k for k in model_state if k not in state]
    unexpected = [k for k in state if k not in model_state]
    return sized, missing, unexpected


def _mismatch_error(filename, checkpoint, sized, missing, unexpected,
                    limit: int = 8) -> CheckpointMismatchError:
    lines = [f'checkpoint {filename} does not fit the model '
             f'({len(sized)} size mismatches, {len(missing)} missing, '
             f'{len(unexpected)} unexpected keys):']
    for k, got, want in sized[:limit]:
        lines.append(f'  size mismatch {k}: checkpoint {got}, model {want}')
    if missing:
        lines.append(f'  missing in checkpoint: {missing[:limit]}')
    if unexpected:
        lines.append(f'  unexpected in checkpoint: {unexpected[:limit]}')
    hint = _pruned_hint(checkpoint, filename)
    if not hint:
        hint = ('\nCheck that the config matches the checkpoint; pass '
                '--non-strict (load_strict=False) to load only the '
                'matching tensors.')
    return CheckpointMismatchError('\n'.join(lines) + hint)


def load_model_state(model: torch.nn.Module, checkpoint, filename: str = '',
                     strict: bool = True,
                     revise_keys=((r'^module\.', ''),), logger=None):
    """Load a checkpoint's ``state_dict`` into ``model``.

    Args:
        model: The (unwrapped) model.
        checkpoint: A loaded checkpoint (with or without ``state_dict``).
        filename: Shown in errors.
        strict: Every key present on both sides with the same shape;
            otherwise mmengine's lenient loading (mismatches are warnings).
        revise_keys: ``(pattern, replacement)`` applied to the keys.
        logger: For the lenient path's warnings.

    Raises:
        CheckpointMismatchError: ``strict`` and the state dict does not fit;
            the message lists the first mismatching keys and shapes.
    """
    if not isinstance(checkpoint, dict):
        raise CheckpointMismatchError(
            f'checkpoint {filename} holds a {type(checkpoint).__name__}, '
            'not a state dict')
    state = checkpoint.get('state_dict', checkpoint)
    for pattern, repl in revise_keys:
        state = {re.sub(pattern, repl, k): v for k, v in state.items()}
    if not strict:
        mm_checkpoint.load_state_dict(model, state, strict=False,
                                      logger=logger)
        return checkpoint
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError:
        sized, missing, unexpected = mismatch_report(model.state_dict(), state)
        raise _mismatch_error(filename, checkpoint, sized, missing,
                              unexpected) from None
    if missing or unexpected:
        raise _mismatch_error(filename, checkpoint, [], list(missing),
                              list(unexpected))
    return checkpoint
