"""``--cfg-options KEY=VALUE ...`` for the command-line tools.

The values are read the way mmengine's ``DictAction`` reads them, so a
tool's ``--cfg-options`` means the same as ``tools/train.py``'s:

* quotes around the whole value are dropped, and every space;
* ``(a,b)`` is a tuple and ``[a,b]`` a list, nested to any depth; a comma
  outside brackets makes a list too (``1,2,3``);
* a scalar is an ``int``, else a ``float``, else ``True`` / ``False``
  (any case), else ``None`` (written ``None``), else the string itself.
"""
from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import Any

__all__ = ['parse_cfg_value', 'parse_cfg_options', 'add_cfg_options_arg']

_CLOSING = {'(': ')', '[': ']'}


def _scalar(text: str) -> Any:
    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            pass
    if text.lower() in ('true', 'false'):
        return text.lower() == 'true'
    return None if text == 'None' else text


def _split_items(text: str) -> list[str]:
    """``text`` cut at the commas outside every bracket (a trailing comma
    ends the last item)."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char in '([':
            depth += 1
        elif char in ')]':
            depth -= 1
        elif char == ',' and depth == 0:
            parts.append(text[start:i])
            start = i + 1
        if depth < 0:
            break
    if depth:
        raise ValueError(f'unbalanced brackets in {text!r}')
    if start < len(text):
        parts.append(text[start:])
    return parts


def _parse(text: str) -> Any:
    opener = text[:1]
    if opener in _CLOSING and text.endswith(_CLOSING[opener]):
        items = [_parse(p) for p in _split_items(text[1:-1])]
        return tuple(items) if opener == '(' else items
    if ',' not in text:
        return _scalar(text)
    return [_parse(p) for p in _split_items(text)]


def parse_cfg_value(text: str) -> Any:
    """The Python value of one ``--cfg-options`` value string.

    Examples:
        >>> parse_cfg_value('0.5')
        0.5
        >>> parse_cfg_value('[(1, 2), [a, b], None]')
        [(1, 2), ['a', 'b'], None]
        >>> parse_cfg_value('1,2')
        [1, 2]
    """
    return _parse(text.strip('\'"').replace(' ', ''))


def parse_cfg_options(items: Iterable[str] | None) -> dict:
    """``{key: value}`` of ``KEY=VALUE`` strings, for ``Config.merge_from_dict``.

    Raises:
        ValueError: An item without ``=``.
    """
    options = {}
    for item in items or ():
        key, sep, value = item.partition('=')
        if not sep:
            raise ValueError(f'--cfg-options takes KEY=VALUE, got {item!r}')
        options[key] = parse_cfg_value(value)
    return options


def add_cfg_options_arg(parser: argparse.ArgumentParser,
                        help: str = 'KEY=VALUE overrides of the config'
                        ) -> argparse.ArgumentParser:
    """Add ``--cfg-options KEY=VALUE ...`` (strings; parse them with
    :func:`parse_cfg_options`)."""
    parser.add_argument('--cfg-options', nargs='*', default=[],
                        metavar='KEY=VALUE', help=help)
    return parser
