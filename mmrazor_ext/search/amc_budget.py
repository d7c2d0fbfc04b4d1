"""The MAC budget of an AMC episode: exact MACs and the action clamp.

Let ``B = target_density * M0`` be the MAC budget. Before taking an action
the environment asks :meth:`MacBudget.bounds` for the largest keep count
whose episode can still end at or below ``B`` when every later decision
keeps its minimum (``action_range[0]``), and the smallest count whose
episode can still reach ``B`` when every later decision keeps its maximum.
The protocol (:mod:`.amc_rewards`) says which of the two bounds apply; with
both, the last decision picks the count that lands closest to ``B``, so
the final model is within channel granularity (a small fraction of a
percent on CIFAR ResNets; 2 % is asserted in the tests).

Every MAC count is :meth:`ChannelPruner.estimate_flops` of the subnet (the
exact MACs of the exported model), so the clamp, the state and the reward
use one FLOPs model. With ``cost=`` the budget counts another cost of the
exported subnet instead -- the latency table's estimate
(:meth:`ChannelPruner.estimate_latency`, via
:class:`~.latency_objective.LatencyObjective`) for a latency budget; the
clamp is the same, since that estimate also only falls as channels go.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from .amc_decisions import Decision, range_counts

__all__ = ['MacBudget']


class MacBudget:
    """MACs of partial subnets and the keep-count bounds of each decision.

    Args:
        pruner: The :class:`~mmrazor_ext.pruners.ChannelPruner`.
        decisions: The episode's decisions.
        target_density: Fraction of the dense MACs to keep.
        action_range: ``(min, max)`` keep fraction per decision.
        orders: ``{space: channel order}`` (most important first) used for
            the masks of decisions not yet taken; see :meth:`set_orders`.
        cost: ``cost(full subnet) -> float`` counted instead of MACs
            (default: :meth:`ChannelPruner.estimate_flops`).
        dense_cost: What ``target_density`` is a fraction of (default: the
            cost of the dense subnet; a latency budget passes the measured
            dense latency).
        budget_name: Config field of the budget, for the messages.
    """

    def __init__(self, pruner, decisions: Sequence[Decision],
                 target_density: float, action_range: Sequence[float],
                 orders: Mapping[str, torch.Tensor],
                 cost: Callable[[Mapping], float] | None = None,
                 dense_cost: float | None = None,
                 budget_name: str = 'amc_cfg.target_density'):
        self.pruner = pruner
        self.decisions = list(decisions)
        self.action_range = tuple(action_range)
        self.target_density = float(target_density)
        self.dense_macs = int(pruner.original_flops)
        self.cost = cost if cost is not None else pruner.estimate_flops
        self.unit = 'MACs' if cost is None else 'estimated latency'
        self.budget_name = budget_name
        self._cache: dict[tuple[str, int], torch.Tensor] = {}
        # spaces without a mask are kept whole (never the pruner's current
        # out_mask, which the end of an episode sets)
        self._dense = {name: torch.ones(sp.num_channels, dtype=torch.bool)
                       for name, sp in pruner.graph.spaces.items()}
        #: cost of the dense subnet (the dense MACs without ``cost``)
        self.dense_estimate = float(self.dense_macs) if cost is None \
            else float(self.cost(self._dense))
        self.dense_cost = self.dense_estimate if dense_cost is None \
            else float(dense_cost)
        self.budget = self.target_density * self.dense_cost
        self.set_orders(orders)

    def set_orders(self, orders: Mapping[str, torch.Tensor]) -> None:
        """Use new static channel orders (drops the cached masks)."""
        self.orders = dict(orders)
        self._cache.clear()

    def full(self, masks: Mapping[str, torch.Tensor]
             ) -> dict[str, torch.Tensor]:
        """``masks`` completed with all-kept masks for the other spaces."""
        return {**self._dense, **masks}

    def stakes(self) -> dict[str, float]:
        """Cost (MACs) that pruning each decision's whole space would
        remove."""
        res = {}
        for d in self.decisions:
            empty = torch.zeros(d.num_channels, dtype=torch.bool)
            res[d.space] = self.dense_estimate - self.macs(
                {d.space: empty})
        return res

    def top(self, space: str, k: int, order=None) -> torch.Tensor:
        """Keep mask of the first ``k`` channels of ``order`` (default: the
        static order, whose masks are cached for the bisections)."""
        if order is None:
            key = (space, k)
            if key not in self._cache:
                self._cache[key] = self.top(space, k, self.orders[space])
            return self._cache[key]
        m = torch.zeros(order.numel(), dtype=torch.bool)
        m[order[:k]] = True
        return m

    def macs(self, masks: Mapping[str, torch.Tensor]) -> float:
        """MACs (or ``cost``) of the exported model for ``{space: keep
        mask}``."""
        return float(self.cost(self.full(masks)))

    def macs_counts(self, counts: Mapping[str, int],
                    masks: Mapping[str, torch.Tensor] | None = None) -> float:
        """MACs with ``masks`` plus the static top-``k`` of ``counts``."""
        full = dict(masks or {})
        for space, k in counts.items():
            full[space] = self.top(space, k)
        return self.macs(full)

    def _range(self, d: Decision) -> tuple[int, int]:
        return range_counts(d, self.action_range)

    def reachable(self, t: int, masks: Mapping[str, torch.Tensor]
                  ) -> tuple[float, float]:
        """(min, max) MACs an episode can still end at after the decisions
        before ``t`` (``masks``), every later one at ``action_range`` min /
        max."""
        future = self.decisions[t:]
        lo = {d.space: self._range(d)[0] for d in future}
        hi = {d.space: self._range(d)[1] for d in future}
        return self.macs_counts(lo, masks), self.macs_counts(hi, masks)

    def check_reachable(self, mode: str, where: str = 'network') -> None:
        """Raise when the budget cannot be met from the start.

        Args:
            mode: Budget mode of the protocol (``both``, ``upper``,
                ``none``).
            where: Config field of the layer list, for the message.
        """
        if mode == 'none':
            return
        m_lo, m_hi = self.reachable(0, {})
        name, unit = self.budget_name, self.unit
        if m_lo > self.budget * 1.02:
            raise ValueError(
                f'{name}={self.target_density:.4g} is not '
                f'reachable: pruning every listed layer to action_range min '
                f'({self.action_range[0]}) keeps {m_lo / self.dense_cost:.3f} '
                f'of the {unit}; list more layers in {where} or lower '
                'action_range[0]')
        if mode == 'both' and m_hi < self.budget * 0.98:
            raise ValueError(
                f'{name}={self.target_density:.4g} is not '
                f'reachable: keeping action_range max ({self.action_range[1]})'
                f' of every listed layer leaves only '
                f'{m_hi / self.dense_cost:.3f} of the {unit}; raise '
                f'action_range[1] or {name}')

    def clamp(self, t: int, masks: Mapping[str, torch.Tensor], order,
              k: int, mode: str) -> int:
        """Keep count of decision ``t`` for the wanted count ``k``.

        Args:
            t: Index of the decision.
            masks: Masks of the decisions taken so far.
            order: Channel order of this step.
            k: Wanted count (allowed, inside ``action_range``).
            mode: Budget mode of the protocol: ``both`` clamps ``k`` into
                the bounds of :meth:`bounds` (the upper one when they
                cross), ``upper`` only to the upper bound, ``none`` not.

        Returns:
            The count to execute.
        """
        if mode == 'none':
            return k
        d = self.decisions[t]
        future = self.decisions[t + 1:]
        full = dict(masks)
        full[d.space] = self.top(d.space, k, order)
        # MACs are monotone in k: two counts tell whether k is inside the
        # bounds, and the bisections only run when it is not
        below = self.macs_counts({f.space: self._range(f)[0]
                                  for f in future}, full) <= self.budget
        if mode == 'upper':
            return k if below else self.bounds(t, masks, order)[1]
        above = self.macs_counts({f.space: self._range(f)[1]
                                  for f in future}, full) >= self.budget
        if below and above:
            return k
        b_lo, b_hi = self.bounds(t, masks, order)
        return b_hi if b_lo > b_hi else min(max(k, b_lo), b_hi)

    def bounds(self, t: int, masks: Mapping[str, torch.Tensor], order
               ) -> tuple[int, int]:
        """(smallest, largest) keep count of decision ``t`` that keeps the
        budget reachable from below / above.

        Args:
            t: Index of the decision.
            masks: Masks of the decisions taken so far.
            order: Channel order of this step (masks of ``k`` channels are
                its first ``k``).
        """
        d = self.decisions[t]
        r_lo, r_hi = self._range(d)
        cand = [k for k in d.allowed if r_lo <= k <= r_hi]
        future = self.decisions[t + 1:]
        f_min = {f.space: self._range(f)[0] for f in future}
        f_max = {f.space: self._range(f)[1] for f in future}

        def macs(k, fut):
            full = dict(masks)
            full[d.space] = self.top(d.space, k, order)
            return self.macs_counts(fut, full)

        # largest k with the rest at minimum still <= budget
        lo_i, hi_i = 0, len(cand) - 1
        if macs(cand[0], f_min) > self.budget:
            b_hi = cand[0]
        else:
            while lo_i < hi_i:
                mid = (lo_i + hi_i + 1) // 2
                if macs(cand[mid], f_min) <= self.budget:
                    lo_i = mid
                else:
                    hi_i = mid - 1
            b_hi = cand[lo_i]
        # smallest k with the rest at maximum still >= budget
        lo_i, hi_i = 0, len(cand) - 1
        if macs(cand[-1], f_max) < self.budget:
            b_lo = cand[-1]
        else:
            while lo_i < hi_i:
                mid = (lo_i + hi_i) // 2
                if macs(cand[mid], f_max) >= self.budget:
                    hi_i = mid
                else:
                    lo_i = mid + 1
            b_lo = cand[lo_i]
        if t == len(self.decisions) - 1 and b_lo > b_hi:
            # last decision: land as close to the budget as possible
            if abs(macs(b_lo, {}) - self.budget) < \
                    abs(macs(b_hi, {}) - self.budget):
                b_hi = b_lo
            else:
                b_lo = b_hi
        return b_lo, b_hi
