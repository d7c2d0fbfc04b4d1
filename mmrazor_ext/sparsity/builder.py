"""``build_sparse_scheduler``: the MSBench entry point."""
import os
from collections.abc import Mapping
from typing import Any

from mmrazor_ext.registry import FAKE_SPARSES, MASK_GENERATORS, SPARSE_SCHEDULERS

from .config import (
    TOP_LEVEL_KEYS,
    SparsityConfigError,
    check_component,
    checked_entries,
    load_sparsity_yaml,
    validate_kwargs,
)
from .fake_sparse import FakeSparse


def _lookup(registry, name: str, where: str, base=None):
    cls = registry.get(name) if isinstance(name, str) else None
    if cls is None or (base is not None and not issubclass(cls, base)):
        known = sorted(k for k, v in registry.module_dict.items()
                       if base is None or (isinstance(v, type) and issubclass(v, base)))
        raise SparsityConfigError(
            f'{where}: unknown type {name!r}; registered: {", ".join(known)}')
    return cls


def build_sparse_scheduler(sparsity_config: Mapping[str, Any] | str | os.PathLike):
    """Build a sparse scheduler from the MSBench-style config.

    Args:
        sparsity_config: ``dict(scheduler=dict(type, kwargs),
            mask_generator=dict(type, kwargs), fake_sparse=dict(type, kwargs),
            leaf_module=[...])``; ``mask_generator`` / ``fake_sparse`` default
            to what the scheduler needs. Also a YAML path, or UP's layout (a
            top-level ``sparsity`` block with ``leaf_module`` beside it), see
            :func:`~mmrazor_ext.sparsity.config.load_sparsity_yaml`. YAML
            text is converted where the schema wants another type
            (``total_iters: None`` -> None, ``'10'`` -> 10).

    Returns:
        A scheduler instance; call ``prepare_sparse_model(model)`` next.

    Raises:
        SparsityConfigError: Unknown key, wrong type or invalid value; the
            message names the key (e.g. ``scheduler.kwargs.sparsity_table``).
    """
    if isinstance(sparsity_config, (str, os.PathLike)) or (
            isinstance(sparsity_config, Mapping) and 'sparsity' in sparsity_config):
        sparsity_config = load_sparsity_yaml(sparsity_config)
    if not isinstance(sparsity_config, Mapping):
        raise SparsityConfigError(
            'sparsity_config: must be a dict or a YAML path, got '
            f'{type(sparsity_config).__name__}')
    sparsity_config = dict(checked_entries(
        sparsity_config, TOP_LEVEL_KEYS, '', ' in sparsity_config; allowed '
        f'keys: {", ".join(TOP_LEVEL_KEYS)}'))
    if 'scheduler' not in sparsity_config:
        raise SparsityConfigError('scheduler: missing from sparsity_config')

    sched_type, sched_kwargs = check_component(sparsity_config['scheduler'],
                                               'scheduler')
    sched_cls = _lookup(SPARSE_SCHEDULERS, sched_type, 'scheduler.type')
    # Validate before building so the message carries the config path; the
    # scheduler gets the converted values (YAML text such as 'None').
    checked = validate_kwargs(sched_kwargs, sched_cls.ARGS, 'scheduler.kwargs',
                              sched_cls.__name__)
    sched_kwargs = {k: checked[k] for k in sched_kwargs}

    gen_cfg = sparsity_config.get(
        'mask_generator', {'type': sched_cls.default_mask_generator})
    gen_type, gen_kwargs = check_component(gen_cfg, 'mask_generator')
    gen_cls = _lookup(MASK_GENERATORS, gen_type, 'mask_generator.type')
    gen_kwargs = validate_kwargs(gen_kwargs, gen_cls.ARGS,
                                 'mask_generator.kwargs', gen_cls.__name__)

    fs_cfg = sparsity_config.get(
        'fake_sparse', {'type': sched_cls.default_fake_sparse})
    fs_type, fs_kwargs = check_component(fs_cfg, 'fake_sparse')
    fs_cls = _lookup(FAKE_SPARSES, fs_type, 'fake_sparse.type', FakeSparse)
    fs_kwargs = validate_kwargs(fs_kwargs, fs_cls.ARGS, 'fake_sparse.kwargs',
                                fs_cls.__name__)
    if fs_cls.__name__ not in gen_cls.fake_sparse_types:
        raise SparsityConfigError(
            f'fake_sparse.type: {gen_cls.__name__} works with '
            f'{gen_cls.fake_sparse_types}, got {fs_cls.__name__}')

    leaf = sparsity_config.get('leaf_module') or []
    return sched_cls(mask_generator=gen_cls(**gen_kwargs),
                     fake_sparse=(fs_cls, fs_kwargs), leaf_module=leaf,
                     **sched_kwargs)
