"""Which channels an AMC action keeps (``pruning_method``).

``l1-rank`` keeps the highest L1 scores; ``stochastic-l1-rank`` samples the
kept channels without replacement with probability proportional to their
L1 score; ``fm-reconstruction`` ranks by ThiNet's greedy feature-map
reconstruction order and then solves least squares for the consumers'
weights on the kept input channels (AMC), from ``n_points_per_fm`` sampled
points per feature map collected once on the original model (at most
``max_fm_points`` per consumer). The sampling, the Gram matrices and the
ranking are those of :mod:`mmrazor_ext.metrics.fm_reconstruction`; the
weight refit is the pruners' one least-squares solve
(:func:`~mmrazor_ext.pruners.solve_consumer`, the same
:class:`~mmrazor_ext.pruners.LeastSquaresStats` that
:meth:`ChannelPruner.reconstruct` uses), without intercept (BN is
recalibrated before every episode is scored) and with a small relative
ridge (``ridge``) that keeps under-determined fits stable.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from mmengine.logging import print_log
from torch import nn

from mmrazor_ext.metrics.fm_reconstruction import (
    FMReconstructionCollector,
    fm_consumers,
)
from mmrazor_ext.pruners import check_ridge, solve_consumer

from .amc_decisions import Decision

__all__ = ['PRUNING_METHODS', 'ChannelChooser', 'default_fm_points']

PRUNING_METHODS = ('l1-rank', 'stochastic-l1-rank', 'fm-reconstruction')


def default_fm_points(model: nn.Module, layer: str) -> int:
    """Default cap of sampled points of a consumer: ``clip(4 * C * K, 1000,
    20000)`` (``C * K`` unknowns per output in its least-squares fit)."""
    ck = model.get_submodule(layer).weight[0].numel()
    return int(min(max(4 * ck, 1000), 20000))


class ChannelChooser:
    """Channel orders of the decisions and fm-reconstruction's weight fit.

    Args:
        pruner: The :class:`~mmrazor_ext.pruners.ChannelPruner`.
        decisions: The episode's decisions.
        method: One of :data:`PRUNING_METHODS`.
        n_points_per_fm: Sampled points per feature map.
        seed: Seed of stochastic-l1-rank and of the feature sampling.
        max_fm_points: Cap of sampled points per consumer (None:
            :func:`default_fm_points`).
        ridge: Relative ridge of the weight refit
            (:meth:`~mmrazor_ext.pruners.LeastSquaresStats.solve`).

    Attributes:
        refit_report (dict): ``{consumer: {rel_error_before,
            rel_error_after, points}}`` of the last refit of each consumer.
    """

    def __init__(self, pruner, decisions: Sequence[Decision], method: str,
                 n_points_per_fm: int = 10, seed: int = 0,
                 max_fm_points: int | None = None, ridge: float = 1e-5):
        if method not in PRUNING_METHODS:
            raise ValueError(f'amc_cfg.pruning_method: unknown method '
                             f'{method!r}; choose one of '
                             f'{", ".join(PRUNING_METHODS)}')
        if max_fm_points is not None and int(max_fm_points) < 1:
            raise ValueError(f'max_fm_points: must be >= 1, got '
                             f'{max_fm_points}')
        self.pruner = pruner
        self.model = pruner.model
        self.graph = pruner.graph
        self.decisions = list(decisions)
        self.method = method
        self.n_points_per_fm = int(n_points_per_fm)
        self.seed = int(seed)
        self.max_fm_points = None if max_fm_points is None \
            else int(max_fm_points)
        self.ridge = check_ridge(ridge, 'ridge')
        self.refit_report: dict[str, dict[str, float]] = {}
        self.rng = np.random.default_rng(seed)
        l1 = pruner.get_metric_local('l1')
        self.l1_scores = {d.space: l1[d.space] for d in self.decisions}
        self._l1 = {d.space: l1[d.space].clamp(min=0) + 1e-12
                    for d in self.decisions}
        #: static order of every decision's space (most important first)
        self.orders = {d.space: torch.argsort(-l1[d.space], stable=True)
                       for d in self.decisions}
        self.features: dict[str, torch.Tensor] = {}
        self.consumers: dict[str, list[str]] = {}

    @property
    def fm_points(self) -> dict[str, int]:
        """Sampled points per consumer (fm-reconstruction)."""
        return {n: int(x.shape[0]) for n, x in self.features.items()}

    def step_order(self, d: Decision) -> torch.Tensor:
        """Channel order of one step (a fresh draw for stochastic-l1-rank)."""
        if self.method != 'stochastic-l1-rank':
            return self.orders[d.space]
        # weighted sampling without replacement (Efraimidis-Spirakis keys)
        w = self._l1[d.space].double().numpy()
        keys = np.log(self.rng.random(w.shape[0])) / w
        return torch.from_numpy(np.argsort(-keys, kind='stable').copy())

    def fit_fm(self, run: Callable[[nn.Module], Any]) -> Any:
        """Sample consumer inputs while ``run(model)`` runs the dense model,
        then rank every space by fm-reconstruction.

        Returns:
            What ``run`` returned.

        Raises:
            RuntimeError: ``run`` did not reach every consumer.
        """
        spaces = {d.space for d in self.decisions}
        consumers = []
        for n in fm_consumers(self.graph, self.model):
            reads = [s for s, _, _ in self.graph.channel_map(n, 'in')
                     if s in spaces]
            for s in reads:
                self.consumers.setdefault(s, []).append(n)
            if reads:
                consumers.append(n)
        if self.max_fm_points is None:
            def cap(name):
                return default_fm_points(self.model, name)
        else:
            cap = self.max_fm_points
        collector = FMReconstructionCollector(
            self.graph, self.model, self.n_points_per_fm, seed=self.seed,
            layers=consumers, max_points=cap, keep_points=True)
        t0 = time.perf_counter()
        result = collector.run(run)
        self.features = collector.features()
        missing = [n for n in consumers if n not in self.features]
        if missing:
            raise RuntimeError(f'fm-reconstruction: no features reached '
                               f'{missing[:5]} (does the feature/val function '
                               'run the model?)')
        fm = self.pruner.get_metric_local('fm_reconstruction',
                                          collector.gram)
        print_log(f'fm-reconstruction: sampled {sum(self.fm_points.values())}'
                  f' input points of {len(consumers)} consumer layers in '
                  f'{time.perf_counter() - t0:.1f} s', logger='current')
        l1 = self.l1_scores
        # ties (spaces no consumer reached) fall back to the L1 order
        self.orders = {
            d.space: torch.argsort(
                -(fm[d.space] + 1e-6 * l1[d.space]
                  / l1[d.space].max().clamp(min=1e-12)), stable=True)
            for d in self.decisions}
        return result

    @torch.no_grad()
    def reconstruct(self, space: str, gmask: torch.Tensor,
                    orig_state: dict[str, torch.Tensor]) -> None:
        """Least-squares refit of the consumers reading ``space`` on their
        kept input channels (:func:`~mmrazor_ext.pruners.solve_consumer`).

        Args:
            space: The space just pruned.
            gmask: Global unit mask of the decisions taken so far.
            orig_state: The dense model's state dict (original weights).
        """
        for name in self.consumers.get(space, []):
            keep = gmask[self.graph.layers[name].in_index].reshape(-1)
            w = orig_state[name + '.weight']
            w3 = w.reshape(w.shape[0], w.shape[1], -1).float()
            new, self.refit_report[name] = solve_consumer(
                self.features[name], w3, keep, self.ridge)
            mod = self.model.get_submodule(name)
            mod.weight.copy_(new.reshape(mod.weight.shape))
