"""CSV tables the tools write for users (atomically, like every result
file: see :mod:`mmrazor_ext.utils.io`)."""
from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence

from .io import atomic_write

__all__ = ['atomic_write_csv']


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
