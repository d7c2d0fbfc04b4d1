"""Strict validation of the MSBench-style ``sparsity_config`` dict.

The accepted format (seeds/002)::

    dict(mask_generator=dict(type='NormalMaskGenerator'),
         fake_sparse=dict(type='FakeSparse', kwargs=dict(...)),
         scheduler=dict(type='AmbaLevelPruneScheduler', kwargs=dict(...)),
         leaf_module=['Space2Depth'])        # optional

Every key is checked: a typo or a wrong type is an error that names the key,
because a silently ignored sparsity setting wastes a whole training run.

YAML text is read as MSBench / UP wrote it (seeds/001): PyYAML reads
``total_iters: None`` as the string ``'None'`` and ``5e-1`` as a string, so
a string where the schema wants None, a number or a bool is converted
(``'None'`` / ``'null'`` / ``'~'`` -> None, ``'10'`` -> 10, ``'5e-1'`` ->
0.5, ``'true'`` -> True); one that does not convert is an error naming the
key. :func:`load_sparsity_yaml` also accepts UP's layout, a top-level
``sparsity:`` block with a sibling ``leaf_module:`` list.
"""
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
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


def type_ok(value: Any, types: tuple[type, ...]) -> bool:
    """Whether ``value`` is one of ``types`` (an int counts as a float, a
    bool never counts as a number).

    Args:
        value: The configured value.
        types: Accepted types; ``type(None)`` accepts None.

    Returns:
        True when the value is accepted.
    """
    if value is None:
        return type(None) in types
    if isinstance(value, bool):
        return bool in types
    if isinstance(value, int) and float in types:
        return True
    return isinstance(value, types)


def type_names(types: tuple[type, ...]) -> str:
    """``'int | None'``: the accepted types, for error messages."""
    return ' | '.join('None' if t is type(None) else t.__name__ for t in types)


#: Strings that mean None where the schema allows None (YAML ``None``,
#: ``null`` and ``~``; PyYAML reads only the last two as None).
NONE_STRINGS = frozenset({'None', 'none', 'NONE', 'null', 'Null', 'NULL', '~'})


def coerce_value(value: Any, types: tuple[type, ...]) -> Any:
    """Convert YAML / command-line text to the type a schema wants.

    Only strings are converted, and only to a type the schema accepts while
    ``str`` is not accepted (a path or a name stays a string), except that a
    None string becomes None wherever None is accepted.

    Args:
        value: The configured value.
        types: The schema's accepted types.

    Returns:
        ``None`` for ``'None'`` / ``'null'`` / ``'~'``; an int, float or bool
        for its text (``'10'``, ``'5e-1'``, ``'true'``); else ``value``
        unchanged (the type check then names the key).
    """
    if not isinstance(value, str):
        return value
    text = value.strip()
    if type(None) in types and text in NONE_STRINGS:
        return None
    if str in types:
        return value
    if int in types:
        try:
            return int(text)
        except ValueError:
            pass
    if float in types:
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if math.isfinite(number):
            return number
    if bool in types and text.lower() in ('true', 'false'):
        return text.lower() == 'true'
    return value


def _type_error(where: str, value: Any, types: tuple[type, ...]) -> str:
    hint = ' (text that is not a number)' if isinstance(value, str) and (
        int in types or float in types) else ''
    return (f'{where}: expected {type_names(types)}, got '
            f'{type(value).__name__} ({value!r}){hint}')


def checked_entries(cfg: Mapping[str, Any],
                    types: Mapping[str, tuple[type, ...]], where: str,
                    unknown: str) -> Iterator[tuple[str, Any]]:
    """Yield ``(key, value)`` for each entry of ``cfg``, the value converted
    as :func:`coerce_value` does and type-checked, in ``cfg``'s order.

    Args:
        cfg: The configured mapping.
        types: Allowed key -> accepted types.
        where: Dotted path of ``cfg`` in the config (``''`` at the top).
        unknown: End of the message for a key not in ``types`` (after
            ``'<path>: unknown key'``).

    Raises:
        SparsityConfigError: An unknown key or a wrong type, when the
            iteration reaches it.
    """
    for key, value in cfg.items():
        path = f'{where}.{key}' if where else key
        if key not in types:
            raise SparsityConfigError(f'{path}: unknown key{unknown}')
        value = coerce_value(value, types[key])
        if not type_ok(value, types[key]):
            raise SparsityConfigError(_type_error(path, value, types[key]))
        yield key, value


def validate_kwargs(kwargs: Any, schema: dict[str, Arg], where: str,
                    owner: str) -> dict[str, Any]:
    """Check ``kwargs`` against ``schema`` and fill in defaults.

    Args:
        kwargs: The user's kwargs (``None`` means empty).
        schema: Name -> :class:`Arg`.
        where: Dotted path of ``kwargs`` in the config, used in messages.
        owner: Class the kwargs belong to, used in messages.

    Returns:
        A new dict with every schema key; YAML text is converted as
        :func:`coerce_value` does.

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
    types = {key: arg.types for key, arg in schema.items()}
    allowed = ', '.join(sorted(schema)) or '(none)'
    for key, value in checked_entries(
            kwargs, types, where, f' for {owner}; allowed keys: {allowed}'):
        check = schema[key].check
        msg = check(value) if check is not None else None
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
        if isinstance(v, str):
            return f'entries must be numbers, got the string {v!r} (unquote it)'
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
    """Validate ``dict(type=..., kwargs=...)`` and return ``(type, kwargs)``.

    Args:
        cfg: The component config (``kwargs: None`` means no kwargs).
        where: Its key in the config (``'scheduler'``), used in messages.

    Returns:
        The type name and a new kwargs dict.

    Raises:
        SparsityConfigError: Not a dict, an unknown key, a wrong type or no
            ``type``.
    """
    if not isinstance(cfg, dict):
        raise SparsityConfigError(
            f'{where}: must be a dict with "type" and optional "kwargs", got '
            f'{type(cfg).__name__}')
    out = dict(checked_entries(cfg, COMPONENT_KEYS, where,
                               '; allowed keys: type, kwargs'))
    if 'type' not in out:
        raise SparsityConfigError(f'{where}.type: missing')
    return out['type'], dict(out.get('kwargs') or {})


# --- YAML / UP layout ----------------------------------------------------------
#: Sibling keys of ``sparsity:`` in UP's layout that are read with it.
UP_SIBLING_KEYS = ('leaf_module',)


def _plain(value: Any) -> Any:
    """Mappings (an mmengine ``ConfigDict`` too) as plain dicts, recursively."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def read_yaml_mapping(path: str | os.PathLike, where: str = 'sparsity_config'
                      ) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping.

    Args:
        path: The YAML file.
        where: What the file is, used in messages.

    Returns:
        The parsed mapping (an empty file is ``{}``).

    Raises:
        FileNotFoundError: No such file.
        SparsityConfigError: A tab in an indentation (YAML indents with
            spaces only; the message names the line), invalid YAML, or a
            document that is not a mapping.
    """
    import yaml

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{where}: YAML file not found: {path}')
    with open(path, encoding='utf-8') as f:
        text = f.read()
    for lineno, line in enumerate(text.splitlines(), 1):
        indent = line[:len(line) - len(line.lstrip(' \t'))]
        if '\t' in indent and line.strip() and not line.lstrip().startswith('#'):
            raise SparsityConfigError(
                f'{where}: {path}, line {lineno}: a tab in the indentation; '
                'YAML indents with spaces only (replace the tab)')
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SparsityConfigError(f'{where}: {path} is not valid YAML: {err}'
                                  ) from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SparsityConfigError(
            f'{where}: {path} must hold a mapping, got {type(data).__name__}')
    return data


def load_sparsity_yaml(source: str | os.PathLike | Mapping,
                       extra_keys: Iterable[str] = ()) -> dict[str, Any]:
    """The MSBench ``sparsity_config`` dict of a YAML file or a dict.

    Two layouts are accepted:

    * MSBench's (seeds/002): ``mask_generator`` / ``fake_sparse`` /
      ``scheduler`` / ``leaf_module`` at the top;
    * UP's (seeds/001): a top-level ``sparsity:`` block holding those keys,
      with ``leaf_module:`` beside it (or inside it)::

          sparsity:
            scheduler:
              type: AmbaLevelPruneScheduler
              kwargs:
                total_iters: None
                sparsity_table: [30, 50, 70]
          leaf_module: [Space2Depth, FrozenBatchNorm2d]

    Values are not validated here: :func:`build_sparse_scheduler` does it
    (and converts YAML text such as ``None``, see :func:`coerce_value`).

    Args:
        source: A YAML path, or the parsed mapping (a dict or ``Config``).
        extra_keys: Top-level keys the caller reads itself (e.g. a Knight
            YAML's ``app_args``); they are left out of the result.

    Returns:
        A new plain dict in MSBench's layout.

    Raises:
        FileNotFoundError: ``source`` names no file.
        SparsityConfigError: Unreadable YAML, not a mapping, ``sparsity`` not
            a mapping, ``leaf_module`` given twice with different values, or
            a key beside ``sparsity`` that is neither ``leaf_module`` nor in
            ``extra_keys`` (the message names it).
    """
    if isinstance(source, (str, os.PathLike)):
        data = read_yaml_mapping(source)
    elif isinstance(source, Mapping):
        data = _plain(source)
    else:
        raise SparsityConfigError(
            'sparsity_config: must be a dict or a YAML path, got '
            f'{type(source).__name__}')
    extra = set(extra_keys)
    data = {k: v for k, v in data.items() if k not in extra}
    if 'sparsity' not in data:
        return data
    block = data.pop('sparsity')
    if not isinstance(block, dict):
        raise SparsityConfigError(
            'sparsity: must be a mapping (mask_generator, fake_sparse, '
            f'scheduler, leaf_module), got {type(block).__name__}')
    for key in data:
        if key not in UP_SIBLING_KEYS:
            raise SparsityConfigError(
                f'{key}: unknown key beside sparsity; only '
                f'{", ".join(UP_SIBLING_KEYS)} is read with it')
    out = dict(block)
    if 'leaf_module' in data:
        if 'leaf_module' in out and out['leaf_module'] != data['leaf_module']:
            raise SparsityConfigError(
                'leaf_module: given both inside and beside sparsity, with '
                f'different values ({out["leaf_module"]!r} and '
                f'{data["leaf_module"]!r}); keep one')
        out['leaf_module'] = data['leaf_module']
    return out
