"""What the plots of this package share: pyplot on the non-interactive Agg
backend, saving a figure as a PNG atomically, and the finish of an
accuracy-vs-FLOPs chart."""
from __future__ import annotations

from mmrazor_ext.utils.io import atomic_write

__all__ = ['pyplot', 'save_png', 'save_xy_plot']


def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def save_png(fig, path: str) -> str:
    """Write ``fig`` to ``path`` as a PNG (120 dpi) via a temp file, then
    rename; the figure is closed either way.

    Returns:
        ``path``.
    """
    try:
        # format='png': the temp file's suffix is not .png
        atomic_write(path, lambda p: fig.savefig(p, dpi=120, format='png'))
    finally:
        pyplot().close(fig)
    return path


def save_xy_plot(fig, ax, path: str, xlabel: str, ylabel: str, title: str,
                 legend_loc: str, vlines=()) -> str:
    """Finish a one-axes chart and :func:`save_png` it: dashed vertical
    lines at ``vlines``, axis labels, title, a light grid and the legend.

    Returns:
        ``path``.
    """
    for t in vlines:
        ax.axvline(t, ls='--', c='k', lw=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc=legend_loc, fontsize=8)
    fig.tight_layout()
    return save_png(fig, path)
