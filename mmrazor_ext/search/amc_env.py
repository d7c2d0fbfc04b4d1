"""AMC pruning environment and the episode loop.

One episode walks the decisions in order; a decision is one
:class:`~mmrazor_ext.graph.ChannelSpace` (pruning a layer's output channels
means pruning the space they belong to, which also prunes every consumer's
input channels and, for residual groups, every producer tied to them). The
agent's action is the fraction of the space's channels to keep.

Layer list (``layers``, Knight's ``network:``): every listed layer's output
space becomes a decision, at the position of its first listed producer. A
space with several producers (a residual group) is only accepted when *all*
its producers are listed; otherwise a ``ValueError`` names the missing ones
(Knight's rule: pruning that would reach layers not in the list indirectly
is an error, never a silent change). Without a list every prunable space is
a decision, in graph order.

Clamping: let ``B = target_density * M0`` be the MAC budget. Before taking
an action the environment computes, with the exact MAC model of the graph,
the largest keep count whose episode can still end at or below ``B`` when
every later decision keeps its minimum (``action_range[0]``), and the
smallest count whose episode can still reach ``B`` when every later decision
keeps its maximum. The protocol (:mod:`.amc_rewards`) says which of the two
bounds apply; with both, the last decision picks the count that lands
closest to ``B``, so the final model is within channel granularity (a small
fraction of a percent on CIFAR ResNets; 2 % is asserted in the tests).

Channel choice (``pruning_method``): ``l1-rank`` keeps the highest L1
scores; ``stochastic-l1-rank`` samples the kept channels without
replacement with probability proportional to their L1 score;
``fm-reconstruction`` ranks by ThiNet's greedy feature-map reconstruction
order and then solves least squares for the consumers' weights on the kept
input channels (AMC), from ``n_points_per_fm`` sampled points per feature
map collected once on the original model. ``group_size`` rounds kept counts
to multiples of itself.

Per decision state (AMC): index, layer type, input and output channels,
stride, kernel size, MACs at stake, MACs already removed, MACs of the later
decisions, previous action; static entries are min-max normalised over the
decisions, MAC entries are fractions of ``M0``.

Each episode ends by masking the model, calling ``calib_fn`` (e.g. BN
recalibration) and ``val_fn``, exporting the sliced model (equivalence
checked, so no episode yields a broken model) and computing the reward.
The model's weights and BN statistics are restored at the next
:meth:`AMCEnv.reset` and by :meth:`AMCEnv.close`.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from mmengine.logging import print_log
from torch import nn

from mmrazor_ext.estimators import count_params, get_model_complexity
from mmrazor_ext.metrics.fm_reconstruction import (
    _consumers,
    _patches,
    least_squares_weights,
)

from .amc_rewards import budget_mode, compute_reward

__all__ = ['AMCEnv', 'Decision', 'PRUNING_METHODS', 'check_val_result',
           'run_amc_search']

PRUNING_METHODS = ('l1-rank', 'stochastic-l1-rank', 'fm-reconstruction')
_STATE_NAMES = ('index', 'type', 'in_channels', 'out_channels', 'stride',
                'kernel', 'flops', 'reduced', 'rest', 'prev_action')


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


@dataclass
class Decision:
    """One step of an episode: a channel space and the layer describing it.

    Attributes:
        space: Channel space name.
        layer: Representative producer (first listed / first in the graph).
        num_channels: Units of the space.
        allowed: Allowed keep counts (ascending, multiples of group_size).
        stake: MACs of the layers whose channels live in the space.
    """

    space: str
    layer: str
    num_channels: int
    allowed: list[int] = field(default_factory=list)
    stake: int = 0


class _FlopsModel:
    """Exact MACs of the exported model for a global unit mask, fast.

    Same arithmetic as :meth:`ChannelPruner.estimate_flops` (per layer:
    MACs x kept fraction of outputs x kept fraction of inputs, grouped convs
    and norms by the output fraction only), as two mat-vecs.
    """

    def __init__(self, model, pruner, example_inputs):
        graph = pruner.graph
        res = get_model_complexity(model, example_inputs, per_layer=True,
                                   leaf_modules=pruner.leaf_modules)
        self.total = int(res['flops'])
        self.params = int(res['params'])
        units = graph.num_units + 1  # trailing "always kept" unit
        rows_o, cols_o, vals_o, rows_i, cols_i, vals_i = ([] for _ in
                                                          range(6))
        flops, use_in, self.layers = [], [], []
        counted = 0
        for name, rec in graph.layers.items():
            if rec.kind == 'param' or name not in res['layers']:
                continue
            f = res['layers'][name]['flops']
            counted += f
            r = len(self.layers)
            self.layers.append(name)
            flops.append(float(f))
            grouped = False
            if rec.kind in ('conv', 'linear', 'conv_transpose'):
                grouped = getattr(model.get_submodule(name), 'groups', 1) > 1
            use_in.append(rec.kind in ('conv', 'linear', 'conv_transpose')
                          and not grouped)
            for idx, rows, cols, vals in ((rec.out_index, rows_o, cols_o,
                                           vals_o),
                                          (rec.in_index, rows_i, cols_i,
                                           vals_i)):
                if idx is None:
                    idx = torch.tensor([units - 1])
                idx = idx.reshape(-1)
                u, c = torch.unique(idx, return_counts=True)
                rows += [r] * u.numel()
                cols += u.tolist()
                vals += (c.double() / idx.numel()).tolist()
        n = len(self.layers)
        # dense (layers x units): ~4 M entries even for ResNet-50
        self.a_out = torch.zeros(n, units, dtype=torch.float64)
        self.a_out[rows_o, cols_o] = torch.tensor(vals_o, dtype=torch.float64)
        self.a_in = torch.zeros(n, units, dtype=torch.float64)
        self.a_in[rows_i, cols_i] = torch.tensor(vals_i, dtype=torch.float64)
        self.flops = torch.tensor(flops, dtype=torch.float64)
        self.use_in = torch.tensor(use_in)
        self.fixed = float(self.total - counted)

    def __call__(self, gmask: torch.Tensor) -> float:
        g = gmask.to(torch.float64)
        fo = self.a_out @ g
        fi = self.a_in @ g
        fi = torch.where(self.use_in, fi, torch.ones_like(fi))
        return self.fixed + float((self.flops * fo * fi).sum())

    def layer_stakes(self, graph) -> dict[str, int]:
        """MACs of the layers touching each space."""
        offsets, off = {}, 0
        for name, space in graph.spaces.items():
            offsets[name] = (off, off + space.num_channels)
            off += space.num_channels
        dense_o = self.a_out > 0
        dense_i = (self.a_in > 0) & self.use_in.reshape(-1, 1)
        touch = dense_o | dense_i
        return {name: int(self.flops[touch[:, a:b].any(1)].sum())
                for name, (a, b) in offsets.items()}


class _FeatureSampler:
    """Input patches of consumer layers at sampled points (original model)."""

    def __init__(self, model, layers, n_points_per_fm, seed, max_points):
        self.model = model
        self.layers = list(layers)
        self.n_points = int(n_points_per_fm)
        self.gen = torch.Generator().manual_seed(seed)
        self.max_points = max_points
        self.points: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
        self.count = dict.fromkeys(layers, 0)

    def _hook(self, name):
        def fn(mod, args):
            if self.count[name] >= self.max_points(name):
                return
            x = args[0].detach().float()
            cols = _patches(mod, x).cpu()                     # (B, C, K, L)
            b, c, k, n = cols.shape
            idx = torch.randint(0, n, (b, min(self.n_points, n)),
                                generator=self.gen)
            pts = torch.stack([cols[i][:, :, idx[i]] for i in range(b)])
            pts = pts.permute(0, 3, 1, 2).reshape(-1, c, k)    # (P, C, K)
            pts = pts[:self.max_points(name) - self.count[name]]
            self.points[name].append(pts)
            self.count[name] += pts.shape[0]
        return fn

    def collect(self, run: Callable[[nn.Module], Any]) -> Any:
        handles = [self.model.get_submodule(n).register_forward_pre_hook(
            self._hook(n)) for n in self.layers]
        try:
            return run(self.model)
        finally:
            for h in handles:
                h.remove()

    def features(self) -> dict[str, torch.Tensor]:
        return {n: torch.cat(p) for n, p in self.points.items() if p}


class AMCEnv:
    """Channel-pruning environment of AMC on a :class:`ChannelPruner`.

    Args:
        pruner: Pruner built on the model to search (``pruner.model``).
        val_fn: ``val_fn(model) -> {'ind1', 'ind2', 'vloss'}`` (percent) on
            the masked model.
        layers: Ordered producer layer names (Knight ``network``); None =
            every prunable space.
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
        max_fm_points: Cap of sampled points per consumer (default
            ``clip(4 * C * K, 1000, 20000)``).
        where: Prefix of error messages about ``layers``.
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
                 max_fm_points: int | None = None, where: str = 'network'):
        if pruning_method not in PRUNING_METHODS:
            raise ValueError(f'amc_cfg.pruning_method: unknown method '
                             f'{pruning_method!r}; choose one of '
                             f'{", ".join(PRUNING_METHODS)}')
        lo, hi = (float(a) for a in action_range)
        if not 0 < lo <= hi <= 1:
            raise ValueError(f'amc_cfg.action_range: need 0 < min <= max <= '
                             f'1, got {list(action_range)}')
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
        self.rng = np.random.default_rng(seed)
        self.seed = int(seed)
        self.where = where

        self._flops = _FlopsModel(self.model, pruner, pruner.example_inputs)
        self.dense_macs = self._flops.total
        self.dense_params = count_params(self.model)
        self.budget = self.target_density * self.dense_macs
        self._offsets, off = {}, 0
        for name, space in self.graph.spaces.items():
            self._offsets[name] = off
            off += space.num_channels
        self.decisions = self._make_decisions(layers)
        stakes = self._flops.layer_stakes(self.graph)
        for d in self.decisions:
            d.stake = stakes[d.space]
            d.allowed = self._allowed(d.num_channels)
        self._orig_state = {k: v.detach().clone()
                            for k, v in self.model.state_dict().items()}
        self._dirty = False
        self.dense_result: dict | None = None
        self.dense_latency: float | None = None
        self._top_cache: dict[tuple[str, int], torch.Tensor] = {}
        self._orders = self._static_orders(feature_fn)
        self._static = self._static_features()
        self.state_dim = len(_STATE_NAMES)
        self.episode = -1
        self._t = 0
        self._masks: dict[str, torch.Tensor] = {}
        self._actions: list[float] = []

    # -- setup ----------------------------------------------------------------------
    def _producers(self, space_name: str) -> list[str]:
        space = self.graph.spaces[space_name]
        return [n for n, role in space.members
                if role == 'out' and self.graph.layers[n].producer]

    def _make_decisions(self, layers) -> list[Decision]:
        spaces = self.graph.spaces
        if layers is None:
            return [Decision(name, name, sp.num_channels)
                    for name, sp in spaces.items()]
        layers = list(layers)
        if not layers:
            raise ValueError(f'{self.where}: the layer list is empty')
        module_names = {n for n, _ in self.model.named_modules()}
        order: dict[str, str] = {}
        for name in layers:
            if name not in module_names:
                raise KeyError(f'{self.where}: layer {name!r} is not in the '
                               'model')
            rec = self.graph.layers.get(name)
            if rec is None or not rec.producer:
                raise ValueError(f'{self.where}: layer {name!r} is not a '
                                 'prunable conv / linear layer of the traced '
                                 'graph')
            touched = self.graph.channel_map(name, 'out')
            if not touched:
                raise ValueError(
                    f'{self.where}: the output channels of {name!r} cannot '
                    'be pruned (they reach the network output or an ignored '
                    'layer)')
            for space, _, _ in touched:
                order.setdefault(space, name)
        listed = set(layers)
        for space in order:
            missing = [p for p in self._producers(space) if p not in listed]
            if missing:
                raise ValueError(
                    f'{self.where}: pruning {order[space]!r} also changes '
                    f'{missing} (they share its output channels, e.g. a '
                    'residual group); list all of them to prune the group '
                    'together, or remove it from the list')
        return [Decision(space, layer, spaces[space].num_channels)
                for space, layer in order.items()]

    def _allowed(self, n: int) -> list[int]:
        g = self.group_size
        allowed = list(range(g, n + 1, g)) if n >= g else [n]
        if allowed[-1] != n:
            allowed.append(n)
        return allowed

    def _snap(self, d: Decision, x: float) -> int:
        """Nearest allowed count to ``x`` channels (ties: more kept)."""
        arr = np.asarray(d.allowed, dtype=np.float64)
        i = int(np.argmin(np.abs(arr - x) - 1e-9 * arr))
        return d.allowed[i]

    def _range_counts(self, d: Decision) -> tuple[int, int]:
        """Smallest / largest allowed count inside ``action_range``."""
        n = d.num_channels
        lo = min((k for k in d.allowed
                  if k >= self.action_range[0] * n - 1e-9),
                 default=d.allowed[-1])
        hi = max((k for k in d.allowed
                  if k <= self.action_range[1] * n + 1e-9),
                 default=d.allowed[0])
        return lo, max(lo, hi)

    def _l1_scores(self) -> dict[str, torch.Tensor]:
        return self.pruner.get_metric_local('l1')

    def _static_orders(self, feature_fn) -> dict[str, torch.Tensor]:
        """Channel order (most important first) of every decision's space."""
        l1 = self._l1_scores()
        self._l1 = {d.space: l1[d.space].clamp(min=0) + 1e-12
                    for d in self.decisions}
        self._features: dict[str, torch.Tensor] = {}
        self._consumers: dict[str, list[str]] = {}
        self._orders = {d.space: torch.argsort(-l1[d.space], stable=True)
                        for d in self.decisions}
        # fail fast, before any data is run through the model
        self._check_reachable()
        if self.pruning_method != 'fm-reconstruction':
            return self._orders
        scores = self._fm_scores(feature_fn, l1)
        self._top_cache.clear()
        return {d.space: torch.argsort(-scores[d.space], stable=True)
                for d in self.decisions}

    def _fm_scores(self, feature_fn, l1):
        spaces = {d.space for d in self.decisions}
        consumers = [n for n in _consumers(self.graph, self.model)
                     if any(s in spaces for s, _, _ in
                            self.graph.channel_map(n, 'in'))]
        for n in consumers:
            for s, _, _ in self.graph.channel_map(n, 'in'):
                if s in spaces:
                    self._consumers.setdefault(s, []).append(n)

        def cap(name):
            w = self.model.get_submodule(name).weight
            ck = w[0].numel()
            return int(min(max(4 * ck, 1000), 20000))

        sampler = _FeatureSampler(self.model, consumers, self.n_points_per_fm,
                                  self.seed, cap)
        fn = feature_fn or self.val_fn
        t0 = time.perf_counter()
        result = sampler.collect(fn)
        if feature_fn is None and result is not None:
            # the dense model was just evaluated: keep its metrics
            self.dense_result = check_val_result(result)
        self._features = sampler.features()
        self._dirty = True  # the functions may have touched BN statistics
        missing = [n for n in consumers if n not in self._features]
        if missing:
            raise RuntimeError(f'fm-reconstruction: no features reached '
                               f'{missing[:5]} (does the feature/val function '
                               'run the model?)')
        grams = {}
        for name, x in self._features.items():
            w = self._weight3(name)
            g = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64)
            for s in range(0, x.shape[0], 256):
                y = torch.einsum('pck,ock->poc', x[s:s + 256], w)
                g += torch.einsum('poc,pod->cd', y, y).double()
            grams[name] = g
        fm = self.pruner.get_metric_local('fm_reconstruction', grams)
        points = sum(x.shape[0] for x in self._features.values())
        print_log(f'fm-reconstruction: sampled {points} input points of '
                  f'{len(grams)} consumer layers in '
                  f'{time.perf_counter() - t0:.1f} s', logger='current')
        # ties (spaces no consumer reached) fall back to the L1 order
        return {n: fm[n] + 1e-6 * l1[n] / l1[n].max().clamp(min=1e-12)
                for n in fm}

    def _weight3(self, name: str) -> torch.Tensor:
        """Weight of a consumer as (O, C, K) (a view for convs)."""
        w = self.model.get_submodule(name).weight.detach()
        return w.reshape(w.shape[0], w.shape[1], -1).float().cpu()

    def _static_features(self) -> np.ndarray:
        rows = []
        for t, d in enumerate(self.decisions):
            m = self.model.get_submodule(d.layer)
            if isinstance(m, nn.Linear):
                kind, cin, stride, kernel = 1.0, m.in_features, 1, 1
            else:
                kind = 0.5 if getattr(m, 'groups', 1) > 1 else 0.0
                cin = getattr(m, 'in_channels', 0)
                stride = max(getattr(m, 'stride', (1,)))
                kernel = int(np.prod(getattr(m, 'kernel_size', (1,))))
            rows.append([t, kind, cin, d.num_channels, stride, kernel,
                         d.stake])
        arr = np.asarray(rows, dtype=np.float64)
        lo, hi = arr.min(0), arr.max(0)
        span = np.where(hi > lo, hi - lo, 1.0)
        return ((arr - lo) / span).astype(np.float32)

    def _check_reachable(self) -> None:
        if self.mode == 'none':
            return
        lo = {d.space: self._range_counts(d)[0] for d in self.decisions}
        hi = {d.space: self._range_counts(d)[1] for d in self.decisions}
        m_lo = self._macs_counts(lo)
        m_hi = self._macs_counts(hi)
        if m_lo > self.budget * 1.02:
            raise ValueError(
                f'amc_cfg.target_density={self.target_density} is not '
                f'reachable: pruning every listed layer to action_range min '
                f'({self.action_range[0]}) keeps {m_lo / self.dense_macs:.3f} '
                f'of the MACs; list more layers in {self.where} or lower '
                'action_range[0]')
        if self.mode == 'both' and m_hi < self.budget * 0.98:
            raise ValueError(
                f'amc_cfg.target_density={self.target_density} is not '
                f'reachable: keeping action_range max ({self.action_range[1]})'
                f' of every listed layer leaves only '
                f'{m_hi / self.dense_macs:.3f} of the MACs; raise '
                'action_range[1] or target_density')

    # -- MACs ------------------------------------------------------------------------
    def _gmask(self, masks: Mapping[str, torch.Tensor]) -> torch.Tensor:
        g = torch.ones(self.graph.num_units + 1, dtype=torch.bool)
        for name, m in masks.items():
            off = self._offsets[name]
            g[off:off + m.numel()] = m
        return g

    def _top(self, space: str, k: int, order=None) -> torch.Tensor:
        if order is None:  # static order: masks are reused by the bounds
            key = (space, k)
            if key not in self._top_cache:
                self._top_cache[key] = self._top(space, k,
                                                 self._orders[space])
            return self._top_cache[key]
        m = torch.zeros(order.numel(), dtype=torch.bool)
        m[order[:k]] = True
        return m

    def _macs_counts(self, counts: Mapping[str, int], masks=None) -> float:
        full = dict(masks or {})
        for space, k in counts.items():
            full[space] = self._top(space, k)
        return self._flops(self._gmask(full))

    def macs(self, masks: Mapping[str, torch.Tensor]) -> float:
        """MACs of the exported model for ``{space: keep mask}`` (fast)."""
        return self._flops(self._gmask(masks))

    def reachable_macs(self) -> tuple[float, float]:
        """(min, max) MACs the current episode can still end at: the
        decisions taken so far, every later one at ``action_range`` min /
        max."""
        future = self.decisions[self._t:]
        lo = {d.space: self._range_counts(d)[0] for d in future}
        hi = {d.space: self._range_counts(d)[1] for d in future}
        return (self._macs_counts(lo, self._masks),
                self._macs_counts(hi, self._masks))

    def _bounds(self, t: int, order) -> tuple[int, int, int, int]:
        """(range lo, range hi, budget lo, budget hi) keep counts at ``t``."""
        d = self.decisions[t]
        r_lo, r_hi = self._range_counts(d)
        cand = [k for k in d.allowed if r_lo <= k <= r_hi]
        future = self.decisions[t + 1:]
        f_min = {f.space: self._range_counts(f)[0] for f in future}
        f_max = {f.space: self._range_counts(f)[1] for f in future}

        def macs(k, fut):
            masks = dict(self._masks)
            masks[d.space] = self._top(d.space, k, order)
            return self._macs_counts(fut, masks)

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
        return r_lo, r_hi, b_lo, b_hi

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
        self._committed = float(self.dense_macs)
        return self._state(0)

    def _state(self, t: int) -> np.ndarray:
        t = min(t, len(self.decisions) - 1)
        rest = sum(d.stake for d in self.decisions[t + 1:])
        prev = self._actions[-1] if self._actions else 1.0
        dyn = [(self.dense_macs - self._committed) / self.dense_macs,
               rest / self.dense_macs, prev]
        return np.concatenate([self._static[t],
                               np.asarray(dyn, np.float32)])

    def _order_for_step(self, d: Decision) -> torch.Tensor:
        if self.pruning_method != 'stochastic-l1-rank':
            return self._orders[d.space]
        # weighted sampling without replacement (Efraimidis-Spirakis keys)
        w = self._l1[d.space].double().numpy()
        keys = np.log(self.rng.random(w.shape[0])) / w
        return torch.from_numpy(np.argsort(-keys, kind='stable').copy())

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
        order = self._order_for_step(d)
        r_lo, r_hi = self._range_counts(d)
        k = self._snap(d, float(action) * d.num_channels)
        k = min(max(k, r_lo), r_hi)
        if self.mode != 'none':
            _, _, b_lo, b_hi = self._bounds(t, order)
        if self.mode == 'both':
            k = b_hi if b_lo > b_hi else min(max(k, b_lo), b_hi)
        elif self.mode == 'upper':
            k = min(k, b_hi)
        mask = self._top(d.space, k, order)
        self._masks[d.space] = mask
        self._dirty = True
        if self.pruning_method == 'fm-reconstruction':
            self._reconstruct(d.space)
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

    @torch.no_grad()
    def _reconstruct(self, space: str) -> None:
        """Least-squares update of the consumers reading ``space``."""
        g = self._gmask(self._masks)
        for name in self._consumers.get(space, []):
            rec = self.graph.layers[name]
            keep = g[rec.in_index].reshape(-1)
            x = self._features[name]
            w_orig = self._orig_state[name + '.weight']
            w3 = w_orig.reshape(w_orig.shape[0], w_orig.shape[1], -1).float()
            if bool(keep.all()):
                new = w3
            else:
                y = torch.einsum('pck,ock->po', x, w3.cpu())
                new = w3.clone()
                new[:, keep] = least_squares_weights(x, y, keep).to(new)
            mod = self.model.get_submodule(name)
            mod.weight.copy_(new.reshape(mod.weight.shape))

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
        reward = compute_reward(
            self.protocol, res['ind1'], macs, self.dense_macs,
            self.target_density, latency, self.dense_latency,
            self.latency_weight)
        return dict(
            res, episode=self.episode, reward=reward, total_macs=int(macs),
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


def run_amc_search(env, agent, warmup: int | None = None,
                   episodes: int | None = None,
                   callback: Callable[[int, dict], None] | None = None,
                   logger: str = 'current') -> list[dict]:
    """Warm-up episodes, then training episodes with policy updates.

    Every step of an episode is stored with the episode's final reward (AMC);
    after each training episode the agent makes one update per step.

    Args:
        env: An environment with ``reset()``, ``step(a)`` and ``state_dim``.
        agent: A :class:`~mmrazor_ext.search.ddpg.DDPGAgent`.
        warmup: Warm-up episodes (default ``agent.cfg.warmup``).
        episodes: Training episodes (default
            ``agent.cfg.num_training_episodes``).
        callback: ``callback(episode, info)`` after every episode (``info``
            of the last step).
        logger: mmengine logger for progress lines.

    Returns:
        Per-episode summaries ``{episode, reward, strategy, seconds, ...}``.
    """
    warmup = agent.cfg.warmup if warmup is None else int(warmup)
    episodes = agent.cfg.num_training_episodes if episodes is None \
        else int(episodes)
    history = []
    total = warmup + episodes
    t_start = time.perf_counter()
    for ep in range(total):
        t0 = time.perf_counter()
        state = env.reset()
        std = agent.cfg.heatup_noise if ep < warmup else \
            agent.cfg.training_noise(ep - warmup)
        traj, done, info = [], False, {}
        while not done:
            action = agent.explore(state, std)
            nxt, _, done, info = env.step(action)
            traj.append((state, info['action'], nxt, done))
            state = nxt
        reward = float(info['reward'])
        for s, a, s2, d in traj:
            agent.observe(s, a, reward, s2, d)
        if ep >= warmup:
            for _ in traj:
                agent.update()
        summary = {k: v for k, v in info.items()
                   if k not in ('model', 'subnet')}
        summary.update(episode=ep, noise=std, warmup=ep < warmup,
                       seconds=time.perf_counter() - t0)
        history.append(summary)
        if callback is not None:
            callback(ep, info)
        best = max(history, key=lambda h: h['reward'])
        extra = ''
        if 'ind1' in info:
            extra = (f", ind1 {info['ind1']:.2f}, MACs "
                     f"{info['normalized_macs']:.1f} %")
        print_log(f'AMC episode {ep + 1}/{total} '
                  f"({'warm-up' if ep < warmup else 'train'}): reward "
                  f'{reward:.4f}{extra}; best {best["reward"]:.4f} (episode '
                  f'{best["episode"]}); {time.perf_counter() - t_start:.0f} s',
                  logger=logger)
    return history
