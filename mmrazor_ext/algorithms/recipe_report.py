"""One report for a whole compression recipe.

Every stage contributes a row (usually :func:`~.recipe_deploy.
measure_stage`'s numbers plus ``stage``; a stage that could not run has a
``skipped`` reason instead of numbers). :func:`write_recipe_report` writes
``recipe_report.json`` and ``recipe_report.csv``, prints a fixed-width table
and draws ``recipe_report.png`` (each stage relative to the first), all
atomically: a kill never leaves half a report.
"""
from __future__ import annotations

import math
import os.path as osp
from collections.abc import Mapping, Sequence
from typing import Any

from mmrazor_ext.utils.io import atomic_write_json
from mmrazor_ext.utils.tables import atomic_write_csv, format_table
from mmrazor_ext.visualization.recipe import RECIPE_METRICS, plot_recipe

__all__ = ['REPORT_FORMAT', 'format_recipe_table', 'normalise_rows',
           'write_recipe_report']

REPORT_FORMAT = 'mmrazor_ext.recipe_report'

#: Numeric fields of a row (None = not measured).
NUMERIC = ('macs', 'params', 'nonzero_params', 'sparsity', 'latency_ms',
           'latency_batch', 'top1')
#: Sparsity patterns flattened into CSV columns ``sparsity_<pattern>``.
PATTERNS = ('2:4', 'block32x64', 'unstructured')


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and \
        math.isfinite(v)


def normalise_rows(rows: Sequence[Mapping[str, Any]]
                   ) -> list[dict[str, Any]]:
    """Checked copies of report rows with every standard field present.

    Args:
        rows: One mapping per stage, in recipe order: ``stage`` (name,
            required), the :data:`NUMERIC` fields, ``sparsity_by_pattern``
            and ``skipped`` (reason or None); other keys are kept.

    Returns:
        The rows with missing standard fields set to None and
        ``relative`` (``{metric: value / first measured stage's value}``).

    Raises:
        ValueError: ``rows`` is empty, a row is not a mapping, has no
            ``stage``, or a numeric field is neither None nor a finite
            number (the message names the row and field).
    """
    if isinstance(rows, Mapping) or not isinstance(rows, Sequence) or \
            not rows:
        raise ValueError('recipe report: rows must be a non-empty list of '
                         'dicts, one per stage')
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f'recipe report: rows[{i}] is a '
                             f'{type(row).__name__}, not a dict')
        stage = row.get('stage')
        if not isinstance(stage, str) or not stage:
            raise ValueError(f'recipe report: rows[{i}].stage must be a '
                             f'non-empty name, got {stage!r}')
        r = dict(row)
        r['skipped'] = str(r['skipped']) if r.get('skipped') else None
        for key in NUMERIC:
            v = r.get(key)
            if v is not None and not _is_number(v):
                raise ValueError(f'recipe report: rows[{i}] ({stage}).{key} '
                                 f'must be a finite number or None, got {v!r}')
            r[key] = v
        by = r.get('sparsity_by_pattern') or {}
        if not isinstance(by, Mapping):
            raise ValueError(f'recipe report: rows[{i}] ({stage})'
                             '.sparsity_by_pattern must be a dict')
        r['sparsity_by_pattern'] = dict(by)
        out.append(r)
    for key, _ in RECIPE_METRICS:
        base = next((r[key] for r in out if not r['skipped']
                     and _is_number(r.get(key)) and r[key]), None)
        for r in out:
            rel = r.setdefault('relative', {})
            v = r.get(key)
            rel[key] = (float(v) / base if base and not r['skipped']
                        and _is_number(v) else None)
    return out


def _scaled(key: str, scale: float):
    def get(r):
        v = r.get(key)
        return None if v is None else v / scale
    return get


def _pattern(name: str):
    def get(r):
        v = r['sparsity_by_pattern'].get(name)
        return None if v is None else 100.0 * v
    return get


def format_recipe_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The fixed-width table of :func:`normalise_rows`' rows."""
    width = max(12, max(len(r['stage']) for r in rows))
    columns = [
        ('stage', 'stage', f'<{width}'),
        ('MMACs', _scaled('macs', 1e6), '9.2f'),
        ('params(K)', _scaled('params', 1e3), '10.1f'),
        ('nnz(K)', _scaled('nonzero_params', 1e3), '9.1f'),
        ('sparse%', _scaled('sparsity', 0.01), '8.2f'),
        ('2:4%', _pattern('2:4'), '6.1f'),
        ('blk%', _pattern('block32x64'), '6.1f'),
        ('unstr%', _pattern('unstructured'), '7.2f'),
        ('lat(ms)', 'latency_ms', '9.2f'),
        ('top1', 'top1', '7.2f'),
        ('note', lambda r: (f'skipped: {r["skipped"]}' if r['skipped']
                            else ''), 's'),
    ]
    # The note column is empty for measured stages: no trailing blanks.
    return '\n'.join(line.rstrip()
                     for line in format_table(rows, columns).splitlines())


def _csv_rows(rows: Sequence[Mapping[str, Any]]) -> tuple[list, list]:
    header = ['stage', 'skipped', *NUMERIC,
              *(f'sparsity_{p}' for p in PATTERNS)]
    # Other scalar fields (a stage's type, epochs ...) follow, in order of
    # first appearance; nested values stay in the JSON only.
    for r in rows:
        for k, v in r.items():
            if k not in header and k not in ('sparsity_by_pattern',
                                             'relative') and \
                    (v is None or isinstance(v, (str, int, float, bool))):
                header.append(k)
    out = []
    for r in rows:
        flat = {k: r.get(k) for k in header}
        for p in PATTERNS:
            flat[f'sparsity_{p}'] = r['sparsity_by_pattern'].get(p)
        out.append({k: ('' if v is None else v) for k, v in flat.items()})
    return out, header


def write_recipe_report(work_dir: str, rows: Sequence[Mapping[str, Any]],
                        title: str = 'compression recipe',
                        print_table: bool = True) -> dict[str, Any]:
    """Write the recipe report files into ``work_dir``.

    Args:
        work_dir: Output folder (created if missing).
        rows: One row per stage (see :func:`normalise_rows`); a row with
            ``skipped`` is shown as skipped with its reason.
        title: Title of the chart.
        print_table: Print the table to stdout.

    Returns:
        ``{'json', 'csv', 'png'}`` paths, ``'table'`` (the text) and
        ``'rows'`` (the normalised rows).
    """
    rows = normalise_rows(rows)
    table = format_recipe_table(rows)
    paths = {
        'json': osp.join(work_dir, 'recipe_report.json'),
        'csv': osp.join(work_dir, 'recipe_report.csv'),
        'png': osp.join(work_dir, 'recipe_report.png'),
    }
    baseline = next((r['stage'] for r in rows if not r['skipped']), None)
    atomic_write_json(paths['json'], {
        'format': REPORT_FORMAT, 'version': 1, 'baseline_stage': baseline,
        'stages': rows}, indent=2)
    csv_rows, header = _csv_rows(rows)
    atomic_write_csv(paths['csv'], csv_rows, header=header)
    plot_recipe(rows, paths['png'], title=title)
    if print_table:
        print(table)
    return {**paths, 'table': table, 'rows': rows}
