"""AMC pruning environment (He et al. 2018) on a :class:`ChannelPruner`.

One episode walks the decisions in order (:mod:`.amc_decisions`: one per
channel space, from Knight's ``network:`` list (by default the listed
layers' input channels, the preceding filters following) or every prunable
space);
the agent's action is the fraction of the space's channels to keep. The
action is rounded to an allowed count (multiples of ``group_size``),
clamped to ``action_range`` and, as the protocol (:mod:`.amc_rewards`)
asks, to the counts that keep the MAC budget reachable
(:mod:`.amc_budget`). Which channels are kept, and fm-reconstruction's
weight refit, is :mod:`.amc_channels`.

Per decision state (AMC): index, layer type, input and output channels,
stride, kernel size, MACs at stake, MACs already removed, MACs of the later
decisions, previous action; static entries are min-max normalised over the
decisions, MAC entries are fractions of ``M0``.

Each episode ends by masking the model, calling ``calib_fn`` (e.g. BN
recalibration) and ``val_fn``, exporting the sliced model (equivalence
checked, so no episode yields a broken model) and computing the reward.
The model's weights and BN statistics are restored at the next
:meth:`AMCEnv.reset` and by :meth:`AMCEnv.close`.

With ``latency_budget`` (a :class:`~.latency_objective.LatencyObjective`
with a budget) the budget, the clamp, the state's cost entries and the
reward's cost term use the latency table's estimate of the subnet instead
of its MACs -- no model is run for it. The reward formulas get the
estimate in MAC units (``latency / dense latency * M0``), so every
protocol keeps its meaning with ``B = ratio * M0``.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from mmrazor_ext.estimators import count_params

from .amc_budget import MacBudget
from .amc_channels import PRUNING_METHODS, ChannelChooser
from .amc_decisions import (
    STATE_NAMES,
    Decision,
    allowed_counts,
    make_decisions,
    range_counts,
    snap,
    static_features,
)
from .amc_rewards import budget_mode, compute_reward

__all__ = ['AMCEnv', 'Decision', 'PRUNING_METHODS', 'check_val_result']


def check_val_result(result: Any, where: str = 'val_fn') -> dict:
    """Validate what a ``val_fn`` returned (Knight: percentages).

    Args:
        result: The returned value.
        where: Name used in error messages.

    Returns:
        ``{'ind1': float, 'ind2': float, 'vloss': float | None}``.

    Raises:
        TypeError: Not a dict.
        KeyError: ``ind1`` or ``ind2`` missing (``vloss`` is optional).
        ValueError: A value is not a number.
    """
    if not isinstance(result, Mapping):
        raise TypeError(f'{where} must return a dict with keys ind1, ind2 '
                        f'(percent) and optionally vloss; got '
                        f'{type(result).__name__}')
    out = {}
    for key in ('ind1', 'ind2'):
        if key not in result:
            raise KeyError(f"{where} result: missing key '{key}' (val_fn must "
                           "return {'ind1': metric 1 in %, 'ind2': metric 2 "
                           "in %, 'vloss': optional})")
        try:
            out[key] = float(result[key])
        except (TypeError, ValueError):
            raise ValueError(f"{where} result['{key}'] must be a number, got "
                             f'{result[key]!r}') from None
    vloss = result.get('vloss')
    out['vloss'] = None if vloss is None else float(vloss)
    return out


class AMCEnv:
    """Channel-pruning environment of AMC on a :class:`ChannelPruner`.

    Args:
        pruner: Pruner built on the model to search (``pruner.model``).
        val_fn: ``val_fn(model) -> {'ind1', 'ind2', 'vloss'}`` (percent) on
            the masked model.
        layers: Ordered layer names (Knight ``network``); None = every
            prunable space. What an entry means is ``network_channels``.
        target_density: Fraction of the MACs to keep, in (0, 1).
        action_range: ``(min, max)`` keep fraction per decision, in (0, 1].
        pruning_method: One of :data:`PRUNING_METHODS`.
        n_points_per_fm: Sampled points per feature map (fm-reconstruction).
        group_size: Kept counts are multiples of this.
        protocol: Reward protocol (:mod:`.amc_rewards`).
        feature_fn: ``feature_fn(model)`` runs forward passes whose consumer
            inputs are sampled for fm-reconstruction (default: ``val_fn``).
        calib_fn: ``calib_fn(model)`` before each ``val_fn`` (e.g. BN
            recalibration); its changes are undone at the next reset.
        latency_fn: ``latency_fn(exported model) -> (latency ms, op_num)``.
        latency_weight: Weight of the latency term of the reward.
        seed: Seed of stochastic-l1-rank and the feature sampling.
        max_fm_points: Cap of sampled points per consumer for
            fm-reconstruction (default ``clip(4 * C * K, 1000, 20000)``,
            ``C * K`` the consumer's inputs per output).
        where: Prefix of error messages about ``layers``.
        network_channels: ``'input'`` (Knight: a listed layer's input
            channels are pruned, the directly preceding filters follow) or
            ``'output'`` (its filters, with residual groups listed whole);
            default: ``layers.channels`` of a
            :class:`~.amc_decisions.NetworkList`, else ``'input'``.
        latency_budget: A :class:`~.latency_objective.LatencyObjective` on
            ``pruner`` with a budget: it replaces ``target_density`` (the
            MAC budget) by the latency table's estimate.
    """

    def __init__(self, pruner, val_fn: Callable[[nn.Module], Mapping],
                 layers: Sequence[str] | None = None,
                 target_density: float = 0.5,
                 action_range: Sequence[float] = (0.05, 0.95),
                 pruning_method: str = 'l1-rank', n_points_per_fm: int = 10,
                 group_size: int = 1, protocol: str = 'mac-constrained',
                 feature_fn: Callable | None = None,
                 calib_fn: Callable | None = None,
                 latency_fn: Callable | None = None,
                 latency_weight: float = 0.0, seed: int = 0,
                 max_fm_points: int | None = None, where: str = 'network',
                 network_channels: str | None = None,
                 latency_budget=None):
        if pruning_method not in PRUNING_METHODS:
            raise ValueError(f'amc_cfg.pruning_method: unknown method '
                             f'{pruning_method!r}; choose one of '
                             f'{", ".join(PRUNING_METHODS)}')
        lo, hi = (float(a) for a in action_range)
        if not 0 < lo <= hi <= 1:
            raise ValueError(f'amc_cfg.action_range: need 0 < min <= max <= '
                             f'1, got {list(action_range)}')
        self.latency_budget = latency_budget
        budget_kw = {}
        if latency_budget is not None:
            target_density = latency_budget.budget_ratio
            if not 0 < target_density < 1:
                raise ValueError(
                    f'{latency_budget.where}: the latency budget is '
                    f'{target_density:.3f} of the dense latency; it must be '
                    'below 1 (the dense model already meets it)')
            budget_kw = dict(cost=latency_budget.estimate,
                             dense_cost=latency_budget.dense_s,
                             budget_name=f'{latency_budget.where}.ratio')
        if not 0 < target_density < 1:
            raise ValueError(f'amc_cfg.target_density: must be in (0, 1), '
                             f'got {target_density}')
        if int(group_size) < 1:
            raise ValueError(f'amc_cfg.group_size: must be >= 1, got '
                             f'{group_size}')
        self.mode = budget_mode(protocol)
        self.protocol = protocol
        self.pruner = pruner
        self.model = pruner.model
        self.graph = pruner.graph
        self.val_fn = val_fn
        self.calib_fn = calib_fn
        self.latency_fn = latency_fn
        self.latency_weight = float(latency_weight)
        self.target_density = float(target_density)
        self.action_range = (lo, hi)
        self.pruning_method = pruning_method
        self.group_size = int(group_size)
        self.n_points_per_fm = int(n_points_per_fm)
        self.seed = int(seed)
        self.where = where

        self.dense_macs = int(pruner.original_flops)
        self.dense_params = count_params(self.model)
        self.decisions = make_decisions(self.graph, self.model, layers, where,
                                        network_channels)
        for d in self.decisions:
            d.allowed = allowed_counts(d.num_channels, self.group_size)
        self.chooser = ChannelChooser(pruner, self.decisions, pruning_method,
                                      n_points_per_fm, seed, max_fm_points)
        self.budget_model = MacBudget(pruner, self.decisions,
                                      self.target_density, self.action_range,
                                      self.chooser.orders, **budget_kw)
        self.budget = self.budget_model.budget
        stakes = self.budget_model.stakes()
        for d in self.decisions:
            d.stake = stakes[d.space]
        self._orig_state = {k: v.detach().clone()
                            for k, v in self.model.state_dict().items()}
        self._dirty = False
        self.dense_result: dict | None = None
        self.dense_latency: float | None = None
        self.dense_op_num: int | None = None
        # fail fast, before any data is run through the model
        self.budget_model.check_reachable(self.mode, where)
        if pruning_method == 'fm-reconstruction':
            self._fit_fm(feature_fn)
        self._static = static_features(self.model, self.decisions)
        self.state_dim = len(STATE_NAMES)
        self.episode = -1
        self._t = 0
        self._masks: dict[str, torch.Tensor] = {}
        self._actions: list[float] = []

    def _fit_fm(self, feature_fn) -> None:
        result = self.chooser.fit_fm(feature_fn or self.val_fn)
        self._dirty = True  # the functions may have touched BN statistics
        if feature_fn is None and result is not None:
            # the dense model was just evaluated: keep its metrics
            self.dense_result = check_val_result(result)
        self.budget_model.set_orders(self.chooser.orders)

    @property
    def fm_points(self) -> dict[str, int]:
        """Sampled input points per consumer (fm-reconstruction)."""
        return self.chooser.fm_points

    # -- MACs ------------------------------------------------------------------------
    def macs(self, masks: Mapping[str, torch.Tensor]) -> float:
        """MACs (with ``latency_budget``: estimated seconds) of the
        exported model for ``{space: keep mask}``."""
        return self.budget_model.macs(masks)

    def reachable_macs(self) -> tuple[float, float]:
        """(min, max) MACs (or seconds) the current episode can end at: the
        decisions taken so far, every later one at ``action_range`` min /
        max."""
        return self.budget_model.reachable(self._t, self._masks)

    # -- episode ----------------------------------------------------------------------
    def _restore(self) -> None:
        if self._dirty:
            self.pruner.clear_subnet()
            self.model.load_state_dict(self._orig_state)
            self._dirty = False

    def close(self) -> None:
        """Give the model back unchanged (no masks, original weights)."""
        self._dirty = True
        self._restore()

    def reset(self) -> np.ndarray:
        """Start an episode; returns the first state."""
        self._restore()
        self.episode += 1
        self._t = 0
        self._masks = {}
        self._actions = []
        self._committed = self.budget_model.dense_estimate
        return self._state(0)

    def _state(self, t: int) -> np.ndarray:
        t = min(t, len(self.decisions) - 1)
        rest = sum(d.stake for d in self.decisions[t + 1:])
        prev = self._actions[-1] if self._actions else 1.0
        dense = self.budget_model.dense_estimate  # MACs or estimated s
        dyn = [(dense - self._committed) / dense, rest / dense, prev]
        return np.concatenate([self._static[t],
                               np.asarray(dyn, np.float32)])

    def step(self, action: float):
        """Apply ``action`` (keep fraction) to the current decision.

        Returns:
            ``(next_state, reward, done, info)``; the reward is 0 until the
            last decision. ``info['action']`` is the executed keep fraction;
            the last ``info`` also has the episode record (``ind1``, ``ind2``,
            ``vloss``, ``total_macs``, ``normalized_macs``,
            ``normalized_nnz``, ``reward``, ``strategy``, ``model``: the
            exported model).
        """
        if self._t >= len(self.decisions):
            raise RuntimeError('AMCEnv.step after the episode ended; call '
                               'reset()')
        t = self._t
        d = self.decisions[t]
        order = self.chooser.step_order(d)
        r_lo, r_hi = range_counts(d, self.action_range)
        k = snap(d, float(action) * d.num_channels)
        k = min(max(k, r_lo), r_hi)
        k = self.budget_model.clamp(t, self._masks, order, k, self.mode)
        self._masks[d.space] = self.budget_model.top(d.space, k, order)
        self._dirty = True
        if self.pruning_method == 'fm-reconstruction':
            gmask = self.graph.global_mask(self.budget_model.full(self._masks))
            self.chooser.reconstruct(d.space, gmask, self._orig_state)
        executed = k / d.num_channels
        self._actions.append(executed)
        self._committed = self.macs(self._masks)
        self._t += 1
        info = {'action': executed, 'keep': k, 'space': d.space}
        done = self._t == len(self.decisions)
        if not done:
            return self._state(self._t), 0.0, False, info
        info.update(self._finish())
        return self._state(self._t), info['reward'], True, info

    def _finish(self) -> dict:
        subnet = {d.space: self._masks[d.space] for d in self.decisions}
        self.pruner.set_subnet(subnet)
        macs = self.pruner.estimate_flops(subnet)
        if self.calib_fn is not None:
            self.calib_fn(self.model)
        res = check_val_result(self.val_fn(self.model))
        small = self.pruner.export()  # raises if it is not equivalent
        params = count_params(small)
        latency = op_num = None
        if self.latency_fn is not None:
            latency, op_num = self.latency_fn(small)
        cost, extra = macs, {}
        if self.latency_budget is not None:
            est = self.budget_model.macs(subnet)
            ratio = est / self.budget_model.dense_cost
            cost = ratio * self.dense_macs  # the latency in MAC units
            extra = dict(estimated_latency_ms=est * 1e3, latency_ratio=ratio)
        reward = compute_reward(
            self.protocol, res['ind1'], cost, self.dense_macs,
            self.target_density, latency, self.dense_latency,
            self.latency_weight)
        return dict(extra,
            **res, episode=self.episode, reward=reward, total_macs=int(macs),
            normalized_macs=100.0 * macs / self.dense_macs,
            normalized_nnz=100.0 * params / self.dense_params,
            params=params, infer_time=latency, op_num=op_num,
            strategy=list(self._actions),
            subnet={k: v.clone() for k, v in subnet.items()}, model=small)

    def evaluate_dense(self) -> dict:
        """Metrics (and latency) of the unpruned model, once."""
        self._restore()
        if self.dense_result is None:
            # no calib_fn: the original BN statistics are the right ones
            self.dense_result = check_val_result(self.val_fn(self.model))
        if self.latency_fn is not None and self.dense_latency is None:
            self.dense_latency, self.dense_op_num = self.latency_fn(
                self.model)
        return dict(self.dense_result)
