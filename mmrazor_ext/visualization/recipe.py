"""Bar chart of a compression recipe: every stage's cost and accuracy
relative to the first stage."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from .common import pyplot, save_png

__all__ = ['RECIPE_METRICS', 'plot_recipe']

#: ``(row key, label)`` of the bars, in drawing order.
RECIPE_METRICS = (('macs', 'MACs'), ('params', 'params'),
                  ('nonzero_params', 'non-zero params'),
                  ('latency_ms', 'CPU latency'), ('top1', 'top-1'))


def _baseline(rows: Sequence[Mapping], key: str) -> float | None:
    """The first measured (non-skipped, non-zero) value of ``key``."""
    for r in rows:
        v = r.get(key)
        if not r.get('skipped') and isinstance(v, (int, float)) and v:
            return float(v)
    return None


def plot_recipe(rows: Sequence[Mapping], path: str,
                title: str = 'compression recipe',
                metrics: Sequence[tuple[str, str]] = RECIPE_METRICS) -> str:
    """Grouped bars, one group per stage, one bar per metric, each metric
    divided by its value at the first measured stage (so that stage's bars
    are all 1).

    Args:
        rows: Report rows with ``stage``, the ``metrics`` keys (None when not
            measured: no bar) and ``skipped`` (a reason: the group shows
            it instead of bars).
        path: PNG path (written via a temp file, then renamed).
        title: Chart title.
        metrics: ``(row key, label)`` per bar.

    Returns:
        ``path``.
    """
    plt = pyplot()
    n_stages, n_metrics = len(rows), len(metrics)
    width = 0.8 / max(n_metrics, 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * n_stages + 2), 4.2))
    colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
    top = 1.0
    for j, (key, label) in enumerate(metrics):
        base = _baseline(rows, key)
        xs, hs = [], []
        for i, r in enumerate(rows):
            v = r.get(key)
            if base is None or r.get('skipped') or \
                    not isinstance(v, (int, float)):
                continue
            xs.append(i - 0.4 + (j + 0.5) * width)
            hs.append(float(v) / base)
        if hs:
            top = max(top, max(hs))
        ax.bar(xs, hs, width, label=label, color=colors[j % len(colors)])
        for x, h in zip(xs, hs):
            ax.text(x, h, f'{h:.2f}', ha='center', va='bottom', fontsize=6,
                    rotation=90)
    for i, r in enumerate(rows):
        if r.get('skipped'):
            reason = str(r['skipped'])
            reason = reason if len(reason) <= 40 else reason[:37] + '...'
            ax.text(i, 0.05 * top, f'skipped:\n{reason}', ha='center',
                    va='bottom', fontsize=7, rotation=90, color='0.3')
    ax.axhline(1.0, ls='--', c='k', lw=0.8)
    ax.set_xticks(range(n_stages))
    ax.set_xticklabels([str(r.get('stage')) for r in rows], rotation=20,
                       ha='right', fontsize=8)
    ax.set_ylim(0, top * 1.45)
    ax.set_ylabel('relative to the first stage')
    ax.set_title(title)
    ax.grid(axis='y', alpha=0.3)
    ax.legend(loc='upper right', fontsize=7, ncol=min(n_metrics, 3))
    fig.tight_layout()
    return save_png(fig, path)
