"""Accuracy-vs-FLOPs curve of AutoSlim's greedy slimming (PNG)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from mmrazor_ext.utils.io import atomic_write

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
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

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
    for t in targets:
        ax.axvline(t, ls='--', c='k', lw=0.8)
    ax.invert_xaxis()
    ax.set_xlabel('FLOPs fraction of the full width')
    ax.set_ylabel('held-out top-1 (%) after adaptive BN')
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc='lower left', fontsize=8)
    fig.tight_layout()
    try:
        # format='png': the temp file's suffix is not .png
        atomic_write(path, lambda p: fig.savefig(p, dpi=120, format='png'))
    finally:
        plt.close(fig)
    return path
