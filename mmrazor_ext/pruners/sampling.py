"""Subnet sampling: which units of every ChannelSpace to keep.

Naming used throughout the pruner: a *prune ratio* is the fraction of a
space's units **removed** (what the seed API calls ``ratio``), a *keep
ratio* the fraction kept (``1 - prune ratio``). A MACs target
(``flops_ratio`` in the seed API) is a keep ratio of the model's MACs.
A subnet is ``{space name: bool keep mask}``.

The *divisor* rounds kept channel counts. An int applies to every space
(1: no rounding, the seed's exact ratios). ``'auto'``, the pruner's
default, chooses it per space from the space's width
(:data:`AUTO_DIVISOR_RULE`): oneDNN's CPU convolutions work on blocks of
16 channels (AVX-512; 8 on AVX2), GPU tensor cores on multiples of 8, so
an unaligned width can cost as much as the next aligned one (AVX-512,
16x16 maps: 23 of 32 channels run as slowly as 32), while rounding a
narrow space would leave few widths to choose from. Measured end to end
(``tools/benchmark/pruning_speed.py --divisors 1 auto``, uniform L1 to 2x
fewer MACs, batch 64, 2 threads, torch 2.14.1, README "Widths and latency
targets"), speed-up / MACs reduction with divisor 1 -> ``'auto'``:
ResNet-50 0.76-0.79 -> 0.83-0.85, ResNet-56 0.57-0.65 -> 0.64-0.70.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

__all__ = ['AUTO_DIVISOR_RULE', 'SubnetSampler', 'check_divisor',
           'check_prune_ratio']

#: ``divisor='auto'``: (minimum channels of a space, divisor) pairs, the
#: first that fits wins: 16 where a space has at least 4 multiples of 16,
#: 8 where it has 4 multiples of 8; narrower spaces are not rounded.
AUTO_DIVISOR_RULE: tuple[tuple[int, int], ...] = ((64, 16), (32, 8))


def check_divisor(value: Any) -> int | str:
    """A validated divisor: an int >= 1 or ``'auto'``.

    Raises:
        ValueError: Naming ``divisor``.
    """
    if isinstance(value, str):
        if value == 'auto':
            return value
        if value.strip().isdigit():  # '8' from a command line, as int()
            value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"divisor must be an int >= 1 or 'auto', got "
                         f'{value!r}')
    return value


def check_prune_ratio(r: Any, what: str = 'prune ratio') -> float:
    """``r`` as a float in [0, 1) (fraction of units removed)."""
    if isinstance(r, bool) or not isinstance(r, (int, float)) or \
            not 0 <= float(r) < 1 or math.isnan(float(r)):
        raise ValueError(f'{what} must be in [0, 1) (fraction of channels '
                         f'removed), got {r!r}')
    return float(r)


class SubnetSampler:
    """Turns scores and prune ratios into keep masks.

    Args:
        spaces: ``{name: ChannelSpace}``.
        divisor: Kept channel counts are rounded to multiples of this (a
            unit of a grouped space holds ``unit_size`` channels), or
            ``'auto'``: per space by :data:`AUTO_DIVISOR_RULE`.
        min_channels: Minimum units kept per space.
    """

    def __init__(self, spaces: Mapping, divisor: int | str = 1,
                 min_channels: int = 1):
        self.spaces = spaces
        self.divisor = check_divisor(divisor)
        self.min_channels = min_channels

    def divisor_of(self, space) -> int:
        """Channel divisor of ``space`` (a ``ChannelSpace`` or its name):
        the int divisor, or the :data:`AUTO_DIVISOR_RULE` value for its
        width in channels."""
        if isinstance(space, str):
            space = self.spaces[space]
        if self.divisor != 'auto':
            return self.divisor
        channels = space.num_channels * max(1, space.unit_size)
        for min_channels, div in AUTO_DIVISOR_RULE:
            if channels >= min_channels:
                return div
        return 1

    def scores(self, scores: Mapping[str, Any] | None
               ) -> dict[str, torch.Tensor]:
        """One float score per unit for every space (checked); a space
        without scores keeps its first units (deterministic)."""
        res = {}
        for name, space in self.spaces.items():
            s = None if scores is None else scores.get(name)
            if s is None:
                s = torch.arange(space.num_channels, 0, -1).float()
            s = torch.as_tensor(s).detach().float().reshape(-1).cpu()
            if s.numel() != space.num_channels:
                raise ValueError(f'scores of space {name!r} have {s.numel()} '
                                 f'entries, expected {space.num_channels}')
            res[name] = s
        return res

    def step(self, space) -> int:
        """Units per divisor step of ``space`` (a space or its name)."""
        if isinstance(space, str):
            space = self.spaces[space]
        return max(1, self.divisor_of(space) // max(1, space.unit_size))

    def granule(self, space) -> int:
        """Units by which kept counts of ``space`` move: :meth:`step`, or 1
        when the space is narrower than one step (it is not rounded)."""
        if isinstance(space, str):
            space = self.spaces[space]
        g = self.step(space)
        return g if space.num_channels >= g else 1

    def round_keep(self, space, keep: int) -> int:
        """``keep`` units rounded to the divisor, within [min, all]."""
        if isinstance(space, str):
            space = self.spaces[space]
        n = space.num_channels
        div = self.step(space)
        if div > 1 and n >= div:
            keep = max(div, int(round(keep / div)) * div)
        keep = max(keep, min(self.min_channels, n), 1)
        return min(keep, n)

    @staticmethod
    def top(scores: torch.Tensor, keep: int) -> torch.Tensor:
        """Keep mask of the ``keep`` highest scores."""
        mask = torch.zeros(scores.numel(), dtype=torch.bool)
        # stable: among equal scores the earlier channel wins
        order = torch.argsort(-scores, stable=True)[:keep]
        mask[order] = True
        return mask

    def nonuniform(self, prune_ratios: Mapping[str, float],
                   scores: Mapping[str, Any] | None = None
                   ) -> dict[str, torch.Tensor]:
        """Remove ``prune_ratios[space]`` of every space's units (0 if
        missing)."""
        unknown = set(prune_ratios) - set(self.spaces)
        if unknown:
            raise KeyError(f'unknown channel spaces: {sorted(unknown)}')
        scores = self.scores(scores)
        subnet = {}
        for name, space in self.spaces.items():
            prune = check_prune_ratio(prune_ratios.get(name, 0.0),
                                      f'prune ratio of {name!r}')
            keep = self.round_keep(
                space, int(round(space.num_channels * (1 - prune))))
            subnet[name] = self.top(scores[name], keep)
        return subnet

    def uniform(self, prune_ratio: float,
                scores: Mapping[str, Any] | None = None
                ) -> dict[str, torch.Tensor]:
        """Remove the same fraction of units from every space."""
        return self.nonuniform({n: prune_ratio for n in self.spaces}, scores)

    def global_threshold(self, prune_ratio: float,
                         scores: Mapping[str, Any] | None = None
                         ) -> dict[str, torch.Tensor]:
        """Remove the lowest ``prune_ratio`` of all units by one threshold
        over scores normalised per space (divided by their maximum), then
        apply per-space minimum and divisor constraints."""
        prune_ratio = check_prune_ratio(prune_ratio)
        norm = {n: _normalised(s) for n, s in self.scores(scores).items()}
        if not norm:
            return {}
        flat = torch.cat(list(norm.values()))
        n_remove = int(round(prune_ratio * flat.numel()))
        if n_remove == 0:
            return {n: torch.ones_like(s, dtype=torch.bool)
                    for n, s in norm.items()}
        thr = torch.sort(flat, stable=True).values[n_remove - 1]
        subnet = {}
        for name, s in norm.items():
            keep = self.round_keep(self.spaces[name], int((s > thr).sum()))
            subnet[name] = self.top(s, keep)
        return subnet

    def for_macs(self, keep_macs: float, scores: Mapping[str, Any] | None,
                 macs_of: Callable[[Mapping], float], total_macs: float,
                 mode: str = 'uniform', tol: float = 0.01
                 ) -> tuple[dict[str, torch.Tensor], float]:
        """Bisect the prune ratio until ``macs_of(subnet) / total_macs``
        is within ``tol`` (relative) of ``keep_macs``.

        If channel granularity makes the tolerance unreachable by bisection,
        units are added back one divisor step at a time in order of
        normalised score (highest first) until it is met.

        Returns:
            ``(subnet, relative error)`` of the closest subnet found.
        """
        scores = self.scores(scores)
        sample = self.uniform if mode == 'uniform' else self.global_threshold

        def err(sub):
            return abs(macs_of(sub) / total_macs / keep_macs - 1)

        lo, hi = 0.0, 0.999  # prune ratio lo: MACs above target; hi: below
        best = sample(0.0, scores)
        best_err = err(best)
        below = None
        for _ in range(40):
            mid = (lo + hi) / 2
            sub = sample(mid, scores)
            keep_frac = macs_of(sub) / total_macs
            e = abs(keep_frac / keep_macs - 1)
            if e < best_err:
                best, best_err = sub, e
            if best_err <= tol:
                break
            if keep_frac > keep_macs:
                lo = mid
            else:
                hi, below = mid, sub
            if hi - lo < 1e-6:
                break
        if best_err > tol and below is not None:
            best, best_err = self._fill_up(below, scores, macs_of,
                                           total_macs, keep_macs, tol, best,
                                           best_err)
        return best, best_err

    def _fill_up(self, below, scores, macs_of, total_macs, keep_macs, tol,
                 best, best_err):
        """Add pruned units back, best normalised score first, in steps of
        the divisor so that kept counts stay multiples of it; a step that
        overshoots the target is skipped, not the end of the search."""
        chunks = []
        for name, mask in below.items():
            step = self.granule(self.spaces[name])
            s = _normalised(scores[name])
            pruned = (~mask).nonzero().reshape(-1)
            pruned = pruned[torch.argsort(-s[pruned], stable=True)]
            for i in range(0, pruned.numel() - step + 1, step):
                idx = pruned[i:i + step]
                chunks.append((float(s[idx[0]]), name, idx))
        chunks.sort(key=lambda t: -t[0])
        cur = {k: v.clone() for k, v in below.items()}
        for _, name, idx in chunks:
            cur[name][idx] = True
            keep_frac = macs_of(cur) / total_macs
            e = abs(keep_frac / keep_macs - 1)
            if e < best_err:
                best = {k: v.clone() for k, v in cur.items()}
                best_err = e
            if e <= tol:
                break
            if keep_frac > keep_macs * (1 + tol):
                # this chunk overshoots (wide divisor steps): drop it and
                # try the next, possibly cheaper, one
                cur[name][idx] = False
        return best, best_err


def _normalised(s: torch.Tensor) -> torch.Tensor:
    """Scores divided by their maximum (all ones if none is positive)."""
    return s / s.max() if float(s.max()) > 0 else torch.ones_like(s)
