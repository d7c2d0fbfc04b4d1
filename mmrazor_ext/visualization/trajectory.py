"""Accuracy-vs-FLOPs curve of AutoSlim's greedy slimming (PNG)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from .common import pyplot, save_xy_plot

__all__ = ['plot_trajectory']


def plot_trajectory(trajectory: Sequence[Mapping], path: str,
                    targets: Sequence[float] = (), title: str = 'AutoSlim'
                    ) -> str:
    """Plot held-out top-1 against the FLOPs fraction along a trajectory.

    Args:
        trajectory: Entries with ``kind`` (``'start'``, ``'greedy'`` or
            ``'fine'``), ``flops_ratio``, ``top1`` and, where a subnet was
            saved, ``target``.
        path: PNG path (written atomically).
        targets: FLOPs fractions drawn as vertical lines.
        title: Plot title.

    Returns:
        ``path``.
    """
    plt = pyplot()

    path_pts = [e for e in trajectory if e['kind'] in ('start', 'greedy')]
    hits = [e for e in trajectory if e.get('target') is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([e['flops_ratio'] for e in path_pts],
            [e['top1'] for e in path_pts], '-o', ms=3, c='tab:blue',
            label='greedy slimming')
    if hits:
        ax.scatter([e['flops_ratio'] for e in hits],
                   [e['top1'] for e in hits], marker='*', s=120,
                   c='tab:red', zorder=3, label='subnet per target')
    ax.invert_xaxis()
    return save_xy_plot(fig, ax, path, 'FLOPs fraction of the full width',
                        'held-out top-1 (%) after adaptive BN', title,
                        'lower left', targets)
