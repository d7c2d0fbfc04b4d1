"""AMC reward protocols: the one place where the four formulas live.

Notation: ``ind1`` is the episode's first metric in percent (top-1 / mAP),
``M`` the MACs of the pruned model, ``M0`` the MACs of the original model and
``d`` the ``target_density`` (fraction of MACs to keep), so the MAC budget is
``B = d * M0``.

``mac-constrained``
    ``R = ind1 / 100``. The environment clamps every action so that the
    budget stays reachable from above *and* below: the episode ends within
    2 % of ``B`` and the agent only decides *where* to prune (AMC's
    resource-constrained compression).
``accuracy-guaranteed``
    ``R = -(1 - ind1 / 100) * ln(M)``. No budget clamp (actions stay in
    ``action_range``): fewer MACs and higher accuracy both raise the reward
    (AMC's accuracy-guaranteed compression); ``target_density`` is unused.
``mac-constrained-experimental``
    ``R = ind1 / 100 - |M / B - 1|``. Only AMC's original one-sided wall is
    applied (never exceed the budget, but the agent may prune more than
    asked); the second term makes pruning below the budget cost reward in
    proportion to the unused MACs.
``punish-agent``
    ``R = ind1 / 100`` when ``M <= B``, else ``R = -M / B`` (< -1, the more
    negative the larger the violation). No budget clamp: the agent has to
    learn the budget from the punishment.

With measured latency (``latency_weight > 0``) every protocol's reward is
reduced by ``latency_weight * t / t0`` (latency relative to the original
model), so the agent prefers faster subnets at the same accuracy.
"""
from __future__ import annotations

import math

__all__ = ['PROTOCOLS', 'budget_mode', 'compute_reward']

#: protocol name -> how the environment constrains actions:
#: ``'both'`` (reach the budget within tolerance), ``'upper'`` (never exceed
#: the budget) or ``'none'`` (``action_range`` only).
PROTOCOLS = {
    'mac-constrained': 'both',
    'accuracy-guaranteed': 'none',
    'mac-constrained-experimental': 'upper',
    'punish-agent': 'none',
}


def budget_mode(protocol: str) -> str:
    """How the environment clamps actions under ``protocol``.

    Raises:
        ValueError: Unknown protocol (the message names ``amc_cfg.protocol``).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f'amc_cfg.protocol: unknown protocol {protocol!r}; '
                         f'choose one of {", ".join(PROTOCOLS)}')
    return PROTOCOLS[protocol]


def compute_reward(protocol: str, ind1: float, macs: float,
                   dense_macs: float, target_density: float,
                   latency: float | None = None,
                   dense_latency: float | None = None,
                   latency_weight: float = 0.0) -> float:
    """Reward of one episode (formulas in the module docstring).

    Args:
        protocol: One of :data:`PROTOCOLS`.
        ind1: First metric in percent (0-100).
        macs: MACs of the pruned model.
        dense_macs: MACs of the original model.
        target_density: Fraction of MACs to keep.
        latency: Measured latency of the pruned model (any unit).
        dense_latency: Latency of the original model (same unit).
        latency_weight: Weight of the latency term (0 = accuracy/MACs only).

    Returns:
        The reward (a float).
    """
    budget_mode(protocol)
    acc = float(ind1) / 100.0
    budget = float(target_density) * float(dense_macs)
    if protocol == 'mac-constrained':
        reward = acc
    elif protocol == 'accuracy-guaranteed':
        reward = -(1.0 - acc) * math.log(max(float(macs), 1.0))
    elif protocol == 'mac-constrained-experimental':
        reward = acc - abs(float(macs) / budget - 1.0)
    else:  # punish-agent
        reward = acc if macs <= budget else -float(macs) / budget
    if latency_weight and latency is not None and dense_latency:
        reward -= float(latency_weight) * float(latency) / float(dense_latency)
    return float(reward)
