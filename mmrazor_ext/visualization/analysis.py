"""Plots of the analysis tools (PNG, written via a temp file, then renamed):
CDP scores (a layers x channels heat-map, the kept fraction of every layer),
per-space pruning sensitivity curves and residual block importance bars."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .common import pyplot, save_png

__all__ = ['plot_cdp_heatmap', 'plot_kept_ratio', 'plot_sensitivity',
           'plot_block_importance']


def _short(name: str) -> str:
    return name.replace('backbone.', '')


def plot_cdp_heatmap(layer_scores: Mapping[str, torch.Tensor], path: str,
                     by: str = 'class') -> str:
    """One row per layer: its channel scores sorted, divided by the row's
    largest magnitude.

    Args:
        layer_scores: ``{layer name: scores of its output channels}``.
        path: PNG path.
        by: How the documents were formed (``'class'`` / ``'sample'``), for
            the title.

    Returns:
        ``path``.
    """
    plt = pyplot()
    layers = list(layer_scores)
    width = max(len(v) for v in layer_scores.values())
    grid = np.full((len(layers), width), np.nan)
    for i, name in enumerate(layers):
        s = np.sort(layer_scores[name].numpy())[::-1]
        grid[i, :len(s)] = s / max(np.abs(s).max(), 1e-12)
    fig, ax = plt.subplots(figsize=(10, max(3, 0.22 * len(layers))))
    im = ax.imshow(grid, aspect='auto', cmap='viridis', interpolation='none')
    ax.set_yticks(range(len(layers)), [_short(n) for n in layers], fontsize=6)
    ax.set_xlabel('channel (sorted by score)')
    ax.set_title(f'CDP scores per layer (normalised, documents by {by})')
    fig.colorbar(im, ax=ax, label='score / max')
    fig.tight_layout()
    return save_png(fig, path)


def plot_kept_ratio(kept: Mapping[str, float], path: str,
                    flops_ratio: float) -> str:
    """Bar chart of the fraction of channels kept per layer.

    Args:
        kept: ``{layer name: kept fraction}``.
        path: PNG path.
        flops_ratio: FLOPs fraction the channels were chosen for (title).

    Returns:
        ``path``.
    """
    plt = pyplot()
    layers = list(kept)
    fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(layers)), 4))
    ax.bar(range(len(layers)), [kept[n] for n in layers], color='tab:blue')
    ax.set_xticks(range(len(layers)), [_short(n) for n in layers],
                  rotation=90, fontsize=6)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel('kept fraction')
    ax.set_title(f'Channels kept per layer at {flops_ratio:.0%} FLOPs '
                 '(CDP, global threshold)')
    fig.tight_layout()
    return save_png(fig, path)


def plot_sensitivity(rows: Sequence[Mapping], base_top1: float, path: str,
                     title: str) -> str:
    """Top-1 against the fraction of channels removed, one curve per space.

    Args:
        rows: Dicts with ``space``, ``ratio`` (removed fraction) and
            ``top1``.
        base_top1: Dense top-1 (a dashed line).
        path: PNG path.
        title: Plot title.

    Returns:
        ``path``.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for space in dict.fromkeys(r['space'] for r in rows):
        pts = [(r['ratio'], r['top1']) for r in rows if r['space'] == space]
        ax.plot(*zip(*pts), marker='.', label=_short(space))
    ax.axhline(base_top1, color='k', ls='--', lw=1, label='dense')
    ax.set_xlabel('fraction of channels removed (this space only)')
    ax.set_ylabel('top-1 (%)')
    ax.set_title(title)
    ax.legend(fontsize=5, ncol=2)
    fig.tight_layout()
    return save_png(fig, path)


def plot_block_importance(rows: Sequence[Mapping], columns: Sequence[str],
                          path: str) -> str:
    """One bar chart per column over the residual blocks; blocks that
    cannot be removed are grey and hatched.

    Args:
        rows: Dicts with ``block``, ``removable`` and the ``columns``
            (NaN / inf are drawn as 0).
        columns: Scores to draw, one chart each.
        path: PNG path.

    Returns:
        ``path``.
    """
    plt = pyplot()
    n = len(columns)
    fig, axes = plt.subplots(n, 1, figsize=(max(6, 0.35 * len(rows)), 2.2 * n),
                             squeeze=False, sharex=True)
    for ax, col in zip(axes[:, 0], columns):
        vals = [r[col] for r in rows]
        vals = [v if v == v and abs(v) != float('inf') else 0 for v in vals]
        bars = ax.bar(range(len(rows)), vals, color='tab:blue')
        for bar, r in zip(bars, rows):
            if not r['removable']:
                bar.set_hatch('//')
                bar.set_color('tab:gray')
        ax.set_ylabel(col, fontsize=8)
    axes[-1, 0].set_xticks(range(len(rows)))
    axes[-1, 0].set_xticklabels([_short(r['block']) for r in rows],
                                rotation=90, fontsize=7)
    axes[0, 0].set_title('block importance (higher = more important; grey '
                         'hatched = not removable)', fontsize=9)
    fig.tight_layout()
    return save_png(fig, path)
