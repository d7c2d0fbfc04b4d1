"""Strict validation of the MSBench-style ``sparsity_config`` dict.

The accepted format (seeds/002)::

    dict(mask_generator=dict(type='NormalMaskGenerator'),
         fake_sparse=dict(type='FakeSparse', kwargs=dict(...)),
         scheduler=dict(type='AmbaLevelPruneScheduler', kwargs=dict(...)),
         leaf_module=['Space2Depth'])        # optional

Every key is checked: a typo or a wrong type is an error that names the key,
because a silently ignored sparsity setting wastes a whole training run.
"""
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class SparsityConfigError(ValueError):
    """An invalid ``sparsity_config``; the message names the offending key."""


_MISSING = object()


@dataclass(frozen=True)
class Arg:
    """Schema of one keyword argument.

    Attributes:
        types: Accepted python types (``bool`` is never accepted as a number).
        default: Default value; ``_MISSING`` makes the argument required.
        check: Optional ``f(value) -> error message or None``.
        doc: One-line description (shown in error messages).
    """

    types: tuple[type, ...]
    default: Any = _MISSING
    check: Callable[[Any], str | None] | None = None
    doc: str = ''

    @property
    def required(self) -> bool:
        return self.default is _MISSING


def _type_ok(value: Any, types: tuple[type, ...]) -> bool:
    if value is None:
        return type(None) in types
    if isinstance(value, bool):
        return bool in types
    if isinstance(value, int) and float in types:
        return True
    return isinstance(value, types)


def _type_names(types: tuple[type, ...]) -> str:
    return ' | '.join('None' if t is type(None) else t.__name__ for t in types)


def validate_kwargs(kwargs: Any, schema: dict[str, Arg], where: str,
                    owner: str) -> dict[str, Any]:
    """Check ``kwargs`` against ``schema`` and fill in defaults.

    Args:
        kwargs: The user's kwargs (``None`` means empty).
        schema: Name -> :class:`Arg`.
        where: Dotted path of ``kwargs`` in the config, used in messages.
        owner: Class the kwargs belong to, used in messages.

    Returns:
        A new dict with every schema key.

    Raises:
        SparsityConfigError: On an unknown key, a missing required key, a
            wrong type or a failed value check.
    """
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, dict):
        raise SparsityConfigError(
            f'{where}: must be a dict, got {type(kwargs).__name__}')
    out = {}
    for key, value in kwargs.items():
        if key not in schema:
            raise SparsityConfigError(
                f'{where}.{key}: unknown key for {owner}; allowed keys: '
                f'{", ".join(sorted(schema)) or "(none)"}')
        arg = schema[key]
        if not _type_ok(value, arg.types):
            raise SparsityConfigError(
                f'{where}.{key}: expected {_type_names(arg.types)}, got '
                f'{type(value).__name__} ({value!r})')
        if arg.check is not None:
            msg = arg.check(value)
            if msg:
                raise SparsityConfigError(f'{where}.{key}: {msg}')
        out[key] = value
    for key, arg in schema.items():
        if key in out:
            continue
        if arg.required:
            raise SparsityConfigError(
                f'{where}.{key}: required by {owner} but missing')
        # Copy mutable defaults so instances never share them.
        default = arg.default
        out[key] = list(default) if isinstance(default, list) else default
    return out


# --- reusable value checks ----------------------------------------------------
def check_sparsity_table(table) -> str | None:
    """Entries are numbers in [0, 100), strictly increasing, at least one."""
    if len(table) == 0:
        return 'must contain at least one entry'
    for v in table:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return f'entries must be numbers, got {v!r}'
        if not 0 <= v < 100:
            return f'entries must lie within [0, 100), got {v!r}'
    if any(b <= a for a, b in zip(table, table[1:])):
        return f'must be strictly increasing, got {list(table)}'
    return None


def check_fraction(v) -> str | None:
    """A sparsity fraction in [0, 1)."""
    return None if 0 <= v < 1 else f'must lie within [0, 1), got {v!r}'


def check_positive(v) -> str | None:
    return None if v > 0 else f'must be > 0, got {v!r}'


def check_non_negative(v) -> str | None:
    return None if v >= 0 else f'must be >= 0, got {v!r}'


def check_str_list(v) -> str | None:
    """A string (comma separated) or a list of strings."""
    if isinstance(v, str):
        return None
    if all(isinstance(x, str) for x in v):
        return None
    return f'must be a string or a list of strings, got {v!r}'


def check_shape(v) -> str | None:
    if v is None:
        return None
    if len(v) < 2 or not all(isinstance(x, int) and not isinstance(x, bool)
                             and x > 0 for x in v):
        return f'must be a list of positive ints like [1, 3, 224, 224], got {v!r}'
    return None


def one_of(*choices) -> Callable[[Any], str | None]:
    """A check accepting only ``choices``."""
    def check(v):
        return None if v in choices else f'must be one of {choices}, got {v!r}'
    return check


def as_name_list(value) -> tuple[str, ...]:
    """``'a, b'`` or ``['a', 'b']`` -> ``('a', 'b')``; empty entries dropped."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = value.split(',')
    return tuple(v.strip() for v in value if v and v.strip())


# Keys shared by every scheduler that chooses layers by name.
LAYER_SELECTION_ARGS = {
    'no_prune_keyword': Arg((str, list, tuple), '', check_str_list,
                            'skip layers whose name contains a keyword'),
    'no_prune_layer': Arg((str, list, tuple), '', check_str_list,
                          'skip layers whose name is listed exactly'),
}

TOP_LEVEL_KEYS = {
    'mask_generator': (dict,),
    'fake_sparse': (dict,),
    'scheduler': (dict,),
    'leaf_module': (list, tuple, str, type(None)),
}
COMPONENT_KEYS = {'type': (str,), 'kwargs': (dict, type(None))}


def check_component(cfg: Any, where: str) -> tuple[str, dict[str, Any]]:
    """Validate ``dict(type=..., kwargs=...)`` and return ``(type, kwargs)``."""
    if not isinstance(cfg, dict):
        raise SparsityConfigError(
            f'{where}: must be a dict with "type" and optional "kwargs", got '
            f'{type(cfg).__name__}')
    for key, value in cfg.items():
        if key not in COMPONENT_KEYS:
            raise SparsityConfigError(
                f'{where}.{key}: unknown key; allowed keys: type, kwargs')
        if not _type_ok(value, COMPONENT_KEYS[key]):
            raise SparsityConfigError(
                f'{where}.{key}: expected {_type_names(COMPONENT_KEYS[key])}, '
                f'got {type(value).__name__}')
    if 'type' not in cfg:
        raise SparsityConfigError(f'{where}.type: missing')
    return cfg['type'], dict(cfg.get('kwargs') or {})
