"""Search space of the hybrid search: a keep ratio per ChannelSpace.

The searcher picks *how many* channels each space keeps (a grid value);
the channel metric's scores pick *which* ones. ``seed_candidates`` gives the
metric-guided starting points of the hybrid search: global-threshold
samples at several pruning ratios and FLOPs budgets, and uniform ratios.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

__all__ = ['KeepRatioSpace']

_SEED_KEYS = ('global_ratios', 'flops_ratios', 'uniform')


class KeepRatioSpace:
    """Discrete keep ratios over a pruner's channel spaces.

    Args:
        pruner: The :class:`~mmrazor_ext.pruners.ChannelPruner`.
        scores: ``{space: channel scores}`` (higher is kept first).
        grid: Allowed keep ratios.
        seeds: ``global_ratios`` (removed fraction under one global
            threshold), ``flops_ratios`` (global threshold bisected to these
            FLOPs fractions), ``uniform`` (every grid value in every space).
    """

    def __init__(self, pruner, scores: Mapping[str, torch.Tensor],
                 grid: Sequence[float], seeds: Mapping | None = None):
        self.pruner = pruner
        self.scores = dict(scores)
        self.grid = list(grid)
        s = dict(global_ratios=(0.2, 0.3, 0.4, 0.5, 0.6),
                 flops_ratios=(0.75, 0.5, 0.35), uniform=True)
        s.update(seeds or {})
        unknown = set(s) - set(_SEED_KEYS)
        if unknown:
            raise KeyError(f'seeds: unknown keys {sorted(unknown)} (allowed: '
                           f'{", ".join(_SEED_KEYS)})')
        self.seeds = s

    @property
    def names(self) -> list[str]:
        return list(self.pruner.channel_spaces)

    def subnet_from_ratios(self, keep: Mapping[str, float]) -> dict:
        """Subnet keeping ``keep[space]`` of each space's channels (the
        highest-scoring ones); missing spaces keep everything."""
        return self.pruner.sample_subnet_nonuni(
            {n: 1.0 - float(keep.get(n, 1.0)) for n in self.names},
            self.scores)

    def flops_ratio(self, keep: Mapping[str, float]) -> float:
        """Exact FLOPs fraction of the candidate (no data needed)."""
        return self.pruner.estimate_flops(self.subnet_from_ratios(keep)) / \
            self.pruner.original_flops

    def seed_candidates(self) -> list[dict[str, float]]:
        """Keep-ratio dicts of the metric-guided seeds (not snapped)."""
        p = self.pruner
        subnets = [p.sample_subnet_diff(r, self.scores)
                   for r in self.seeds['global_ratios']]
        subnets += [p.sample_subnet_for_flops(fr, self.scores, mode='global',
                                              verify=False)
                    for fr in self.seeds['flops_ratios']]
        res = [{n: float(m.float().mean()) for n, m in s.items()}
               for s in subnets]
        if self.seeds['uniform']:
            res += [{n: g for n in self.names} for g in self.grid]
        return res
