"""Type and range checks of a config's numeric fields, before anything runs.

A value given as ``--cfg-options train_cfg.n_trials=abc`` arrives as the
string ``'abc'``; without a check it fails much later as a ``TypeError``
that names no field (or, like ``n_trials=0``, runs and leaves an empty
study behind). :func:`check_config` is called by the project's Runner
before it builds anything, so a bad value is a :class:`ConfigFieldError`
naming the field and nothing is written.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ['ConfigFieldError', 'check_config', 'check_field']


class ConfigFieldError(ValueError):
    """A config field has the wrong type or value; the message names it."""


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int_at_least(low: int) -> Callable[[Any], str | None]:
    def check(v):
        if not _is_int(v):
            return f'an integer >= {low}'
        return None if v >= low else f'an integer >= {low}'
    return check


def _interval(v) -> str | None:
    return None if _is_int(v) and (v >= 1 or v == -1) else \
        'an integer >= 1 (or -1 for never)'


def _positive_number_or_none(v) -> str | None:
    return None if v is None or (_is_number(v) and v > 0) else \
        'a number > 0 or None'


def _fraction_or_none(v) -> str | None:
    return None if v is None or (_is_number(v) and 0 < v <= 1) else \
        'a number in (0, 1] or None'


def _fractions(v) -> str | None:
    if isinstance(v, (list, tuple)) and v and all(
            _is_number(x) and 0 < x <= 1 for x in v):
        return None
    return 'a non-empty list of numbers in (0, 1]'


def _int_or_none(v) -> str | None:
    return None if v is None or _is_int(v) else 'an integer or None'


# dotted path -> check returning what was expected (None when fine)
_CHECKS: dict[str, Callable[[Any], str | None]] = {
    'train_cfg.max_epochs': _int_at_least(1),
    'train_cfg.max_iters': _int_at_least(1),
    'train_cfg.val_interval': _int_at_least(1),
    'train_cfg.val_begin': _int_at_least(0),
    'train_cfg.n_trials': _int_at_least(1),
    'train_cfg.bn_batches': _int_at_least(1),
    'train_cfg.eval_samples': _int_at_least(1),
    'train_cfg.timeout': _positive_number_or_none,
    'train_cfg.max_flops_ratio': _fraction_or_none,
    'train_cfg.min_flops_ratio': _fraction_or_none,
    'train_cfg.targets': _fractions,
    'randomness.seed': _int_or_none,
    'default_hooks.checkpoint.interval': _interval,
    'default_hooks.checkpoint.max_keep_ckpts': _int_at_least(-1),
    'default_hooks.logger.interval': _int_at_least(1),
}
for _split in ('train', 'val', 'test'):
    _CHECKS[f'{_split}_dataloader.batch_size'] = _int_at_least(1)
    _CHECKS[f'{_split}_dataloader.num_workers'] = _int_at_least(0)


def check_field(name: str, value: Any,
                check: Callable[[Any], str | None]) -> None:
    """Raise :class:`ConfigFieldError` when ``check(value)`` complains.

    Args:
        name: Dotted field name, used in the message.
        value: The configured value.
        check: Returns a description of the expected value, or None.
    """
    expected = check(value)
    if expected is not None:
        raise ConfigFieldError(
            f'{name} must be {expected}, got {value!r} '
            f'({type(value).__name__})')


_MISSING = object()


def _lookup(cfg: Mapping, path: str):
    """(found, value) of a dotted path in a dict or mmengine Config."""
    node: Any = cfg
    for part in path.split('.'):
        get = getattr(node, 'get', None)
        node = get(part, _MISSING) if callable(get) else _MISSING
        if node is _MISSING:
            return False, None
    return True, node


def check_config(cfg: Mapping) -> None:
    """Check the known numeric fields of ``cfg`` (absent ones are skipped).

    Raises:
        ConfigFieldError: naming the first bad field, its value and type.
    """
    for path, check in _CHECKS.items():
        found, value = _lookup(cfg, path)
        if found:
            check_field(path, value, check)
    found, strict = _lookup(cfg, 'load_strict')
    if found and not isinstance(strict, bool):
        raise ConfigFieldError(f'load_strict must be True or False, got '
                               f'{strict!r}')
