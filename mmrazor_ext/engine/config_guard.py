"""What ``tools/train.py``, ``tools/test.py`` and ``tools/search.py`` check
in a config before anything is built, and the top-level ``sparsity=`` key.

* **mmcv-1.x / mmcls-0.x keys are errors.** mmengine's Runner reads none of
  ``data=dict(samples_per_gpu=...)``, ``optimizer_config``, ``lr_config``,
  ``runner=dict(type='EpochBasedRunner')`` ...: an old config would train on
  whatever its ``_base_`` says and exit 0. :func:`check_legacy_keys` raises
  :class:`LegacyConfigError` with one line per such key, naming its
  mmengine equivalent.
* **Unread keys are warnings.** :func:`warn_unread_keys` names every other
  top-level key that neither mmengine's Runner nor this project reads.
  Variables a Python config (or one of its ``_base_`` files) uses to build
  other values (``data_root``, ``sparsity_table``, ``{{_base_.model}}``) are
  not warned about, nor keys starting with ``_``.
* **``sparsity=`` turns on sparse training.** :func:`apply_sparsity_key`
  turns a top-level ``sparsity = dict(...)`` (MSBench's ``sparsity_config``,
  UP's layout or a YAML path; a top-level ``leaf_module = [...]`` beside it
  is read with it) into a ``SparsityHook`` in ``custom_hooks``. This is the
  equivalent of UP / MSBench's sparse runner (``runner: type: sparse``): the
  Runner builds the float model, ``load_from`` loads the float checkpoint,
  the hook traces the network and attaches the fake-sparse nodes, the
  scheduler drives masks and LR restarts during training.

:func:`guard_config` runs all three, in the order the tools need.
"""
from __future__ import annotations

import ast
import inspect
import logging
import os
import os.path as osp
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

from mmengine.logging import print_log
from mmengine.runner import Runner as MMRunner

from mmrazor_ext.sparsity import build_sparse_scheduler, load_sparsity_yaml
from mmrazor_ext.sparsity.config import SparsityConfigError

from .config_checks import ConfigFieldError

__all__ = [
    'LEGACY_KEYS', 'LegacyConfigError', 'apply_sparsity_key',
    'check_legacy_keys', 'guard_config', 'known_keys', 'unread_keys',
    'warn_unread_keys'
]


class LegacyConfigError(ConfigFieldError):
    """A config uses mmcv-1.x / mmcls-0.x keys; one line per key."""


#: mmcv-1.x / mmcls-0.x top-level key -> what an mmengine config writes.
LEGACY_KEYS: dict[str, str] = {
    'data': "train_dataloader / val_dataloader / test_dataloader = dict("
            "batch_size=<samples_per_gpu>, num_workers=<workers_per_gpu>, "
            "sampler=dict(type='DefaultSampler', shuffle=True), dataset=dict("
            "type=..., data_root=..., data_prefix=...)) (mmpretrain 1.x "
            "datasets take data_root; data_prefix is relative to it)",
    'resume_from': "resume=True with load_from=PATH (here also "
                   "resume=True with resume_from=PATH, or "
                   "tools/train.py CONFIG --resume PATH)",
    'auto_resume': "resume=True (tools/train.py CONFIG --resume)",
    'optimizer': "optim_wrapper=dict(optimizer=dict(type='SGD', lr=...))",
    'optimizer_config': "optim_wrapper=dict(clip_grad=dict(max_norm=...), "
                        "accumulative_counts=N) (type='AmpOptimWrapper' "
                        "for fp16)",
    'lr_config': "param_scheduler=[dict(type='LinearLR', ...) (warm-up), "
                 "dict(type='MultiStepLR' / 'CosineAnnealingLR', ...)]",
    'momentum_config': "param_scheduler=[dict(type='CosineAnnealingMomentum'"
                       ", ...)]",
    'runner': "train_cfg=dict(by_epoch=True, max_epochs=N) for "
              "EpochBasedRunner, train_cfg=dict(by_epoch=False, "
              "max_iters=N) for IterBasedRunner",
    'total_epochs': "train_cfg=dict(by_epoch=True, max_epochs=N)",
    'workflow': "train_cfg=dict(val_interval=N) with val_cfg=dict() "
                "(validation every N epochs)",
    'evaluation': "val_evaluator=dict(type='Accuracy', topk=(1, 5)) with "
                  "train_cfg=dict(val_interval=N); save_best goes to "
                  "default_hooks.checkpoint",
    'checkpoint_config': "default_hooks=dict(checkpoint=dict("
                         "type='CheckpointHook', interval=N))",
    'log_config': "default_hooks=dict(logger=dict(type='LoggerHook', "
                  "interval=N)) and visualizer=dict(vis_backends=[...])",
    'fp16': "optim_wrapper=dict(type='AmpOptimWrapper', "
            "loss_scale='dynamic') (or tools/train.py --amp)",
    'dist_params': "env_cfg=dict(dist_cfg=dict(backend='nccl'))",
    'cudnn_benchmark': "env_cfg=dict(cudnn_benchmark=True)",
    'mp_start_method': "env_cfg=dict(mp_cfg=dict(mp_start_method='fork'))",
    'opencv_num_threads': "env_cfg=dict(mp_cfg=dict(opencv_num_threads=0))",
    'gpu_ids': "torchrun with --launcher pytorch (tools/dist_train.sh) or "
               "CUDA_VISIBLE_DEVICES",
}

# Inside mmcv-1.x ``data=dict(...)``: key -> its mmengine place.
_DATA_KEYS = {
    'samples_per_gpu': '<split>_dataloader.batch_size',
    'workers_per_gpu': '<split>_dataloader.num_workers',
    'persistent_workers': '<split>_dataloader.persistent_workers',
    'train': 'train_dataloader.dataset',
    'val': 'val_dataloader.dataset',
    'test': 'test_dataloader.dataset',
    'data_prefix': "the dataset's data_root (and data_prefix)",
}

# Read by mmengine's Runner besides the arguments of Runner.__init__
# (which Runner.from_cfg passes from the config), and by mmengine's Config.
_MMENGINE_EXTRA_KEYS = frozenset({
    'model_wrapper_cfg', 'sync_bn', 'find_unused_parameters',
    'activation_checkpointing', 'efficient_conv_bn_eval', 'compile',
    'runner_type', 'custom_imports',
})
# Read by this project: the Runner (load_strict, resume_from), the tools.
_PROJECT_KEYS = frozenset({'load_strict', 'resume_from', 'sparsity'})


def known_keys() -> frozenset[str]:
    """Top-level keys something reads: the arguments mmengine's
    ``Runner.from_cfg`` passes, the other keys mmengine reads and this
    project's."""
    params = set(inspect.signature(MMRunner.__init__).parameters)
    return frozenset(params - {'self', 'cfg'}) | _MMENGINE_EXTRA_KEYS | \
        _PROJECT_KEYS


def _prefix(tool: str | None) -> str:
    return f'{tool}: ' if tool else ''


def _default_tool() -> str:
    return osp.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ''


def check_legacy_keys(cfg: Mapping, tool: str | None = None) -> None:
    """Reject mmcv-1.x / mmcls-0.x top-level keys.

    ``resume_from`` is accepted with ``resume=True`` (this project's Runner
    then resumes from that file); alone it is the mmcv-1.x key.

    Args:
        cfg: The config (a dict or an mmengine ``Config``).
        tool: Name of the calling tool, used in the message.

    Raises:
        LegacyConfigError: One line per legacy key, naming its mmengine
            equivalent (for ``data``, also each sub-key's new place).
    """
    lines = []
    for key, equivalent in LEGACY_KEYS.items():
        if key not in cfg:
            continue
        if key == 'resume_from':
            if cfg.get('resume') is True:
                continue
            what = 'without resume=True, the mmcv-1.x key (nothing resumes)'
        else:
            what = 'an mmcv-1.x key that nothing reads'
        line = f'  {key}: {what}; write {equivalent}'
        if key == 'data' and isinstance(cfg[key], Mapping):
            moved = [f'{k} -> {_DATA_KEYS[k]}' for k in cfg[key]
                     if k in _DATA_KEYS]
            moved += [f'{split}.data_prefix -> {_DATA_KEYS["data_prefix"]}'
                      for split in ('train', 'val', 'test')
                      if isinstance(cfg[key].get(split), Mapping)
                      and 'data_prefix' in cfg[key][split]]
            if moved:
                line += ' [' + '; '.join(moved) + ']'
        lines.append(line)
    if lines:
        raise LegacyConfigError(
            f'{_prefix(tool)}the config has mmcv-1.x / mmcls-0.x keys that '
            'mmengine ignores (it would train on whatever else the config '
            'says); rewrite them:\n' + '\n'.join(lines))


# --- variables of Python configs -------------------------------------------------
_BASE_REF = re.compile(r'_base_\.(\w+)')
_TEMPLATE = re.compile(r'\{\{[^{}]*\}\}')


def _base_files(tree: ast.Module) -> list[str]:
    bases: list[str] = []
    for node in tree.body:
        if not isinstance(node, ast.Assign) or not any(
                isinstance(t, ast.Name) and t.id == '_base_'
                for t in node.targets):
            continue
        values = node.value.elts if isinstance(
            node.value, (ast.List, ast.Tuple)) else [node.value]
        bases += [v.value for v in values
                  if isinstance(v, ast.Constant) and isinstance(v.value, str)]
    return bases


def config_variables(filename: str | None) -> set[str] | None:
    """Names a Python config file and its ``_base_`` files read as
    variables (``data_root`` in ``dict(data_root=data_root)``,
    ``{{_base_.model}}``).

    Args:
        filename: The config file (None: a config built from a dict).

    Returns:
        The names, or None when a file cannot be parsed (then nothing can be
        said about which keys are used).
    """
    names: set[str] = set()
    todo, seen = [filename] if filename else [], set()
    while todo:
        path = osp.abspath(todo.pop())
        if path in seen or not path.endswith('.py') or not osp.isfile(path):
            continue
        seen.add(path)
        with open(path, encoding='utf-8') as f:
            text = f.read()
        names.update(_BASE_REF.findall(text))
        try:
            tree = ast.parse(_TEMPLATE.sub('None', text))
        except SyntaxError:
            return None
        names.update(n.id for n in ast.walk(tree)
                     if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load))
        todo += [osp.join(osp.dirname(path), b) for b in _base_files(tree)
                 if '::' not in b]
    return names


def _nested_items(value: Any):
    """``(key, value)`` of every entry below ``value`` (key None in lists)."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield k, v
            yield from _nested_items(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield None, v
            yield from _nested_items(v)


def _inlined(cfg: Mapping, key: str) -> bool:
    """Whether the value of top-level ``key`` recurs inside another key, as
    in a config mmengine dumped (variables written out as values): a
    non-empty string, list or dict anywhere, a number under the same key
    name (``max_epochs`` and ``train_cfg.max_epochs``)."""
    value = cfg[key]
    if value is None or isinstance(value, bool):
        return False
    by_value = isinstance(value, (str, list, tuple, Mapping)) and len(value) > 0
    for other, top in cfg.items():
        if other == key:
            continue
        for k, v in [(other, top), *_nested_items(top)]:
            if (by_value or k == key) and type(v) is type(value) and v == value:
                return True
    return False


def unread_keys(cfg: Mapping) -> list[str] | None:
    """Top-level keys nothing reads: not known (:func:`known_keys`), not
    private (``_`` prefix), not a legacy key (an error instead), and not a
    variable of the config: one its files use by name, or whose value
    recurs in another key (a dumped config, see :func:`_inlined`).

    Args:
        cfg: The config; its ``filename`` (an mmengine ``Config``) locates
            the files whose variables are exempt.

    Returns:
        The sorted keys, or None when the config's files could not be
        parsed.
    """
    used = config_variables(getattr(cfg, 'filename', None))
    if used is None:
        return None
    known = known_keys()
    return sorted(k for k in cfg.keys()
                  if not str(k).startswith('_') and k not in known
                  and k not in LEGACY_KEYS and k not in used
                  and not _inlined(cfg, k))


def warn_unread_keys(cfg: Mapping, tool: str | None = None) -> list[str]:
    """Log a warning naming every key of :func:`unread_keys`.

    Args:
        cfg: The config.
        tool: Name of the calling tool, used in the message.

    Returns:
        The keys warned about.
    """
    keys = unread_keys(cfg) or []
    # Under torchrun every rank loads the config: warn once.
    if keys and os.environ.get('RANK', '0') == '0':
        hint = (' (leaf_module is read only beside sparsity=)'
                if 'leaf_module' in keys else '')
        print_log(f'{_prefix(tool)}config keys that nothing reads (a typo? '
                  f'an mmcv-1.x key?): {", ".join(keys)}{hint}',
                  logger='current', level=logging.WARNING)
    return keys


# --- sparsity= ------------------------------------------------------------------
_HOOK_TYPES = ('SparsityHook', 'mmrazor_ext.SparsityHook')


def _resolve_yaml(path: str, cfg: Mapping) -> str:
    """A relative YAML path: from the working directory, else from the
    config file's folder."""
    if osp.isabs(path) or osp.exists(path):
        return path
    filename = getattr(cfg, 'filename', None)
    beside = osp.join(osp.dirname(filename), path) if filename else path
    return beside if osp.exists(beside) else path


def apply_sparsity_key(cfg: MutableMapping) -> MutableMapping:
    """Turn a top-level ``sparsity=`` into a ``SparsityHook`` entry.

    ``sparsity`` holds MSBench's ``sparsity_config`` (a dict), UP's layout
    (``dict(sparsity=..., leaf_module=...)``) or a YAML path in either
    layout; a top-level ``leaf_module`` beside it is read with it.
    ``sparsity=None`` trains dense. Both keys are removed from ``cfg`` and
    ``dict(type='mmrazor_ext.SparsityHook', sparsity_config=...)`` is
    appended to ``custom_hooks``; the sparsity config is checked now, so a
    bad value stops the tool before anything is built.

    Args:
        cfg: The config, changed in place.

    Returns:
        ``cfg``.

    Raises:
        SparsityConfigError: An invalid sparsity config (the message names
            the key, e.g. ``sparsity.scheduler.kwargs.total_iters``),
            ``leaf_module`` given twice, or a ``SparsityHook`` already in
            ``custom_hooks``.
    """
    if 'sparsity' not in cfg:
        return cfg
    spec = cfg.pop('sparsity')
    leaf = cfg.pop('leaf_module', None)
    if spec is None:
        return cfg
    if isinstance(spec, (str, os.PathLike)):
        spec = _resolve_yaml(os.fspath(spec), cfg)
    elif not isinstance(spec, Mapping):
        raise SparsityConfigError(
            'sparsity: must be a dict (MSBench sparsity_config) or a YAML '
            f'path, got {type(spec).__name__}')
    try:
        sparsity_config = load_sparsity_yaml(spec)
        if leaf is not None:
            inner = sparsity_config.get('leaf_module')
            if inner is not None and inner != leaf:
                raise SparsityConfigError(
                    'leaf_module: given both at the top and inside the '
                    f'sparsity config ({leaf!r} and {inner!r}); keep one')
            sparsity_config['leaf_module'] = leaf
        build_sparse_scheduler(sparsity_config)
    except SparsityConfigError as err:
        raise SparsityConfigError(f'sparsity.{err}') from err
    hooks = list(cfg.get('custom_hooks') or [])
    if any(isinstance(h, Mapping) and h.get('type') in _HOOK_TYPES
           for h in hooks):
        raise SparsityConfigError(
            'sparsity: the config also has a SparsityHook in custom_hooks; '
            'keep one of them')
    hooks.append(dict(type='mmrazor_ext.SparsityHook',
                      sparsity_config=sparsity_config))
    cfg['custom_hooks'] = hooks
    return cfg


def guard_config(cfg: MutableMapping, tool: str | None = None
                 ) -> MutableMapping:
    """Everything a tool checks once ``--cfg-options`` are merged: legacy
    keys (error), ``sparsity=`` (to a hook), unread keys (warning).

    Args:
        cfg: The config, changed in place by :func:`apply_sparsity_key`.
        tool: Name of the calling tool for messages (default: the script
            name).

    Returns:
        ``cfg``.

    Raises:
        LegacyConfigError: mmcv-1.x / mmcls-0.x keys.
        SparsityConfigError: An invalid ``sparsity=``.
    """
    tool = _default_tool() if tool is None else tool
    check_legacy_keys(cfg, tool)
    apply_sparsity_key(cfg)
    warn_unread_keys(cfg, tool)
    return cfg
