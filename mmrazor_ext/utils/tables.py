"""Tables of the tools: CSV files written for users (atomically, like every
result file: see :mod:`mmrazor_ext.utils.io`) and fixed-width text tables
printed to the console."""
from __future__ import annotations

import csv
import os.path as osp
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .io import atomic_write, atomic_write_json

__all__ = ['atomic_write_csv', 'format_table', 'write_json_csv']


def atomic_write_csv(path: str, rows: Sequence,
                     header: Sequence[str] | None = None) -> str:
    """Write a CSV table atomically.

    Args:
        path: Destination.
        rows: Dicts (one column per key; the columns are ``header`` or the
            first row's keys) or sequences (written as they are, under
            ``header`` when given).
        header: Column names.

    Returns:
        ``path``.
    """
    rows = list(rows)
    as_dicts = bool(rows) and isinstance(rows[0], Mapping)

    def write(tmp):
        with open(tmp, 'w', newline='') as f:
            if as_dicts:
                w = csv.DictWriter(f, fieldnames=list(header or rows[0]))
                w.writeheader()
            else:
                w = csv.writer(f)
                if header is not None:
                    w.writerow(header)
            w.writerows(rows)
    return atomic_write(path, write)


def write_json_csv(out_dir: str, name: str, result, rows: Sequence,
                   indent: int = 2) -> tuple[str, str]:
    """A benchmark's result files: ``result`` as ``out_dir/name.json`` and
    its table ``rows`` as ``out_dir/name.csv`` (both atomically).

    Returns:
        The two paths.
    """
    return (atomic_write_json(osp.join(out_dir, f'{name}.json'), result,
                              indent=indent),
            atomic_write_csv(osp.join(out_dir, f'{name}.csv'), rows))

def format_table(rows: Sequence[Mapping],
                 columns: Sequence[tuple[str, str | Callable[[Mapping], Any],
                                         str]]) -> str:
    """A fixed-width text table: a header line, then one line per row.

    Args:
        rows: The table's rows.
        columns: ``(title, key, spec)`` per column: ``key`` is a row key or
            a function of the row, ``spec`` a format spec such as ``'<40'``,
            ``'7.2f'`` or ``'>6d'``. A title is aligned as its values (left
            where the spec says so or is for text, right otherwise) in the
            same width; a value ``None`` is printed as ``-``, aligned alike.

    Returns:
        The lines joined by newlines (no trailing newline); columns are
        separated by one space.
    """
    title_specs = [_title_spec(spec) for _, _, spec in columns]
    lines = [' '.join(f'{title:{ts}}'
                      for (title, _, _), ts in zip(columns, title_specs))]
    for row in rows:
        cells = []
        for (_, key, spec), ts in zip(columns, title_specs):
            v = key(row) if callable(key) else row[key]
            cells.append(f"{'-':{ts}}" if v is None else f'{v:{spec}}')
        lines.append(' '.join(cells))
    return '\n'.join(lines)


def _title_spec(spec: str) -> str:
    """The spec of a column's title: its value spec's alignment and width
    (values are right-aligned unless the spec says otherwise or is for
    text)."""
    m = re.match(r'([<>^]?)(\d*)', spec)
    align, width = m.group(1), m.group(2)
    if not align:
        align = '<' if not spec or spec[-1] == 's' or spec[-1].isdigit() \
            else '>'
    return f'{align}{width}'
