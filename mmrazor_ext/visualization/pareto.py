"""Pareto-front plot of a subnet search (accuracy vs FLOPs)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from .common import pyplot, save_xy_plot

__all__ = ['plot_pareto']


def plot_pareto(records: Sequence[Mapping], front: Sequence[int], path: str,
                original_flops: int | None = None,
                targets: Sequence[float] = (), title: str = 'search'
                ) -> str:
    """Scatter every evaluated candidate, highlight the Pareto front.

    Args:
        records: Dicts with ``top1``, ``flops`` and optional ``seed``.
        front: Indices into ``records`` of the Pareto front.
        path: PNG path (written via a temp file, then renamed).
        original_flops: Dense MACs; when given the x axis is the FLOPs
            fraction and ``targets`` are drawn as vertical lines.
        targets: FLOPs fractions of interest.
        title: Plot title.

    Returns:
        ``path``.
    """
    plt = pyplot()

    def x(r):
        return r['flops'] / original_flops if original_flops else \
            r['flops'] / 1e6

    fig, ax = plt.subplots(figsize=(6, 4))
    plain = [r for r in records if not r.get('seed')]
    seeds = [r for r in records if r.get('seed')]
    ax.scatter([x(r) for r in plain], [r['top1'] for r in plain], s=12,
               c='0.6', label='candidates')
    if seeds:
        ax.scatter([x(r) for r in seeds], [r['top1'] for r in seeds], s=24,
                   marker='^', c='tab:blue', label='metric-guided seeds')
    pf = sorted((records[i] for i in front), key=x)
    ax.plot([x(r) for r in pf], [r['top1'] for r in pf], '-o', c='tab:red',
            ms=4, label='Pareto front')
    return save_xy_plot(
        fig, ax, path,
        'FLOPs fraction' if original_flops else 'MFLOPs (MACs)',
        'top-1 (%) after adaptive BN', title, 'lower right',
        targets if original_flops else ())
