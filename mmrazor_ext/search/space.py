"""Search space of the hybrid search: a keep ratio per ChannelSpace.

The searcher picks *how many* channels each space keeps (a grid value);
the channel metric's scores pick *which* ones. ``seed_candidates`` gives the
metric-guided starting points of the hybrid search: global-threshold
samples at several pruning ratios and FLOPs budgets, and uniform ratios.

Naming: a *keep* ratio is the kept fraction (search grids, AutoSlim's
``min_keep_ratio``); a *prune* ratio is the removed fraction
(:class:`~mmrazor_ext.pruners.ChannelPruner`'s ``ratio``).
:func:`renamed_kwarg` maps the old, ambiguous keyword names onto the new
ones.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ['KeepRatioSpace', 'renamed_kwarg']

_SEED_KEYS = ('global_prune_ratios', 'flops_ratios', 'uniform')


def renamed_kwarg(value: Any, old_value: Any, name: str, old_name: str,
                  owner: str, default: Any = None) -> Any:
    """Value of keyword ``name``, also accepted under its old name.

    Args:
        value: What was passed as ``name`` (None: not given).
        old_value: What was passed as ``old_name`` (None: not given).
        name: The keyword's name.
        old_name: Its deprecated name.
        owner: Who takes the keyword (for the messages).
        default: Returned when neither was given.

    Returns:
        The value to use.

    Raises:
        ValueError: Both names given with different values.
    """
    if old_value is not None:
        warnings.warn(f'{owner}: {old_name!r} is deprecated, use {name!r}',
                      DeprecationWarning, stacklevel=3)
        if value is not None and value != old_value:
            raise ValueError(f'{owner}: {name}={value!r} and its deprecated '
                             f'name {old_name}={old_value!r} disagree; '
                             f'give {name} only')
        value = old_value
    return default if value is None else value


class KeepRatioSpace:
    """Discrete keep ratios over a pruner's channel spaces.

    Args:
        pruner: The :class:`~mmrazor_ext.pruners.ChannelPruner`.
        scores: ``{space: channel scores}`` (higher is kept first).
        grid: Allowed keep ratios.
        seeds: ``global_prune_ratios`` (removed fractions under one global
            threshold; old name ``global_ratios``), ``flops_ratios`` (global
            threshold bisected to these FLOPs fractions), ``uniform`` (every
            grid value in every space).
        latency: A :class:`~.latency_objective.LatencyObjective` on
            ``pruner`` (the latency table as objective / constraint); with
            a budget, the subnet bisected to it on the table
            (``sample_subnet_for_latency``) is one more seed.
    """

    def __init__(self, pruner, scores: Mapping[str, torch.Tensor],
                 grid: Sequence[float], seeds: Mapping | None = None,
                 latency=None):
        self.pruner = pruner
        self.latency = latency
        self.scores = dict(scores)
        self.grid = list(grid)
        given = dict(seeds or {})
        prune = renamed_kwarg(given.pop('global_prune_ratios', None),
                              given.pop('global_ratios', None),
                              'global_prune_ratios', 'global_ratios', 'seeds',
                              default=(0.2, 0.3, 0.4, 0.5, 0.6))
        s = dict(global_prune_ratios=prune, flops_ratios=(0.75, 0.5, 0.35),
                 uniform=True)
        s.update(given)
        unknown = set(s) - set(_SEED_KEYS)
        if unknown:
            raise KeyError(f'seeds: unknown keys {sorted(unknown)} (allowed: '
                           f'{", ".join(_SEED_KEYS)})')
        self.seeds = s

    @property
    def names(self) -> list[str]:
        return list(self.pruner.channel_spaces)

    def subnet_from_ratios(self, keep: Mapping[str, float]) -> dict:
        """Subnet keeping the fraction ``keep[space]`` of each space's
        channels (the highest-scoring ones); missing spaces keep
        everything."""
        # the pruner's ratios are removed fractions
        return self.pruner.sample_subnet_nonuni(
            {n: 1.0 - float(keep.get(n, 1.0)) for n in self.names},
            self.scores)

    def flops_ratio(self, keep: Mapping[str, float]) -> float:
        """Exact FLOPs fraction of the candidate (no data needed)."""
        return self.pruner.estimate_flops(self.subnet_from_ratios(keep)) / \
            self.pruner.original_flops

    def latency_ratio(self, keep: Mapping[str, float]) -> float:
        """Latency-table estimate of the candidate as a fraction of the
        dense latency (no data, no timing)."""
        if self.latency is None:
            raise RuntimeError('KeepRatioSpace: no latency objective')
        return self.latency.ratio(self.subnet_from_ratios(keep))

    def seed_candidates(self) -> list[dict[str, float]]:
        """Keep-ratio dicts of the metric-guided seeds (not snapped)."""
        p = self.pruner
        subnets = [p.sample_subnet_diff(r, self.scores)
                   for r in self.seeds['global_prune_ratios']]
        subnets += [p.sample_subnet_for_flops(fr, self.scores, mode='global',
                                              verify=False)
                    for fr in self.seeds['flops_ratios']]
        lat = self.latency
        if lat is not None and lat.has_budget and lat.budget_ratio < 1:
            # on the table, as the constraint (no measured calibration)
            extra = {k: lat.cfg[k] for k in ('min_keep',) if k in lat.cfg}
            subnets.append(p.sample_subnet_for_latency(
                lat.budget_ratio, self.scores,
                mode=lat.cfg.get('sampling', 'global'),
                tol=lat.cfg.get('tol', 0.01), calibrate=False,
                progress=lat.progress, **lat.options, **extra))
        res = [{n: float(m.float().mean()) for n, m in s.items()}
               for s in subnets]
        if self.seeds['uniform']:
            res += [{n: g for n in self.names} for g in self.grid]
        return res
