"""Latency targets: choose widths by measured latency.

:class:`LatencyModel` tables every conv / linear layer of a pruner's graph
(:class:`~mmrazor_ext.estimators.latency_table.LatencyTable`, widths at
``1/grid`` steps rounded to each space's divisor) and estimates a subnet as
the sum of table lookups plus the rest of the dense model's time (pooling,
adds, untimed BN / activations: element-wise) scaled by the kept output
elements. :func:`~.latency_sampling.sample_subnet_for_latency` picks
widths on that estimate (bisection, or the greedy
:meth:`LatencyModel.efficient_subnet`), then by default times the exported
subnet and corrects the target (:mod:`.latency_sampling`): the table's sum
is not the model's latency.

Target keys (:func:`check_latency_target`): ``ratio`` (kept fraction of
the dense latency) or ``ms`` (per batch), ``sampling``
(:data:`LATENCY_SAMPLINGS`, default ``'efficient'``), ``batch`` (64),
``grid`` (8), ``repeats``, ``cache_dir``, ``num_threads``, ``clock``,
``tol``, ``calibrate`` (True), ``calib_iters`` (3), ``calib_repeats`` (5),
``calib_tol`` (0.03), ``min_keep`` (0.25, ``'efficient'`` only).
"""
from __future__ import annotations

import math
import weakref
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from mmrazor_ext.estimators.latency import CLOCKS
from mmrazor_ext.estimators.latency_table import (
    DEFAULT_LATENCY_CACHE_DIR,
    TIMED_TYPES,
    LatencyTable,
)

__all__ = ['CALIBRATION_OPTIONS', 'LATENCY_SAMPLINGS', 'LATENCY_TABLE_OPTIONS',
           'LATENCY_TARGET_KEYS', 'LatencyModel', 'check_calibration_options',
           'check_latency_target', 'latency_model_of', 'width_candidates']

#: keys of ``target=dict(mode='latency', ...)``
LATENCY_TARGET_KEYS = ('mode', 'ratio', 'ms', 'sampling', 'batch', 'grid',
                       'repeats', 'cache_dir', 'num_threads', 'clock', 'tol',
                       'calibrate', 'calib_iters', 'calib_repeats',
                       'calib_tol', 'min_keep')
#: closed-loop calibration options (see
#: :class:`~.latency_sampling.LatencyCalibrator`)
CALIBRATION_OPTIONS = ('calibrate', 'calib_iters', 'calib_repeats',
                       'calib_tol')
#: options a latency target passes on to
#: :func:`~.latency_sampling.sample_subnet_for_latency` (the table's, the
#: calibration's and ``min_keep``); :func:`latency_model_of`
#: ignores all but the table's
LATENCY_TABLE_OPTIONS = ('batch', 'grid', 'repeats', 'cache_dir',
                         'num_threads', 'clock') + CALIBRATION_OPTIONS + \
    ('min_keep',)
#: ``target.sampling`` values of a latency target
LATENCY_SAMPLINGS = ('efficient', 'uniform', 'global')


def _int_field(target: Mapping, key: str, low: int,
               prefix: str = 'target.') -> None:
    v = target.get(key)
    if v is not None and (isinstance(v, bool) or not isinstance(v, int)
                          or v < low):
        raise ValueError(f'{prefix}{key} must be an int >= {low}, got {v!r}')


def check_latency_target(target: Mapping) -> dict:
    """A validated copy of ``dict(mode='latency', ratio=... | ms=...)``.

    Raises:
        ValueError: Naming the bad field (``target.ratio``, ``target.ms``,
            ``target.sampling`` ...).
    """
    target = dict(target)
    unknown = set(target) - set(LATENCY_TARGET_KEYS)
    if unknown:
        raise ValueError(f"target: unknown keys {sorted(unknown)} for "
                         f"mode='latency' (known: {list(LATENCY_TARGET_KEYS)})")
    has_ratio, has_ms = 'ratio' in target, 'ms' in target
    if has_ratio == has_ms:
        raise ValueError("target: mode='latency' needs exactly one of "
                         'target.ratio (fraction of the dense latency kept) '
                         'and target.ms (milliseconds per batch)')
    if has_ratio:
        r = target['ratio']
        if isinstance(r, bool) or not isinstance(r, (int, float)) or \
                not 0 < r < 1:
            raise ValueError(f'target.ratio must be in (0, 1) (fraction of '
                             f'the dense latency kept), got {r!r}')
    else:
        ms = target['ms']
        if isinstance(ms, bool) or not isinstance(ms, (int, float)) or \
                not ms > 0 or math.isinf(ms):
            raise ValueError(f'target.ms must be a positive number of '
                             f'milliseconds, got {ms!r}')
    sampling = target.setdefault('sampling', 'efficient')
    if sampling not in LATENCY_SAMPLINGS:
        raise ValueError(f'target.sampling must be one of '
                         f"{list(LATENCY_SAMPLINGS)} for mode='latency', "
                         f'got {sampling!r}')
    _int_field(target, 'batch', 1)
    _int_field(target, 'grid', 1)
    _int_field(target, 'repeats', 1)
    _int_field(target, 'num_threads', 1)
    clock = target.get('clock', 'wall')
    if clock not in CLOCKS:
        raise ValueError(f'target.clock must be one of {sorted(CLOCKS)}, '
                         f'got {clock!r}')
    if clock == 'cpu' and target.get('num_threads') != 1:
        raise ValueError("target.clock='cpu' needs target.num_threads=1 "
                         '(CPU time sums the threads)')
    tol = target.get('tol', 0.01)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or \
            not 0 < tol < 1:
        raise ValueError(f'target.tol must be in (0, 1), got {tol!r}')
    cache_dir = target.get('cache_dir')
    if cache_dir is not None and not isinstance(cache_dir, str):
        raise ValueError(f'target.cache_dir must be a folder path or None, '
                         f'got {cache_dir!r}')
    check_calibration_options(target, 'target.')
    return target


def check_calibration_options(options: Mapping, prefix: str = '') -> None:
    """Check ``calibrate`` / ``calib_iters`` / ``calib_repeats`` /
    ``calib_tol`` / ``min_keep`` where present.

    Raises:
        ValueError: Naming the field (with ``prefix``, e.g. ``target.``).
    """
    if not isinstance(options.get('calibrate', True), bool):
        raise ValueError(f'{prefix}calibrate must be True or False, got '
                         f'{options["calibrate"]!r}')
    _int_field(options, 'calib_iters', 1, prefix)
    _int_field(options, 'calib_repeats', 1, prefix)
    for key in ('calib_tol', 'min_keep'):
        v = options.get(key)
        if v is not None and (isinstance(v, bool) or
                              not isinstance(v, (int, float)) or
                              not 0 < v < 1):
            raise ValueError(f'{prefix}{key} must be in (0, 1), got {v!r}')


def width_candidates(n: int, divisor: int, grid: int) -> list[int]:
    """Widths at ``1/grid`` steps of ``n`` rounded to ``divisor`` (when
    ``n`` holds one), plus ``n``."""
    res = {n}
    for k in range(1, grid + 1):
        c = n * k / grid
        if divisor > 1 and n >= divisor:
            c = max(divisor, round(c / divisor) * divisor)
        res.add(min(n, max(1, int(round(c)))))
    return sorted(res)


class LatencyModel:
    """Estimated latency of a pruner's subnets from a measured table.

    Args:
        pruner: The :class:`~mmrazor_ext.pruners.ChannelPruner`.
        batch: Batch of every measurement (the deployment batch).
        grid: Candidate widths per layer side: ``1/grid`` steps.
        repeats: Timed runs per grid point (fastest kept).
        cache_dir: Table cache folder (None: no cache).
        num_threads: Intra-op threads (default: the current setting).
        progress: tqdm bar while measuring.
        clock: ``'wall'`` or ``'cpu'`` (one thread only).

    Attributes:
        table: The :class:`LatencyTable`.
        dense_s: Estimated (= measured) latency of the dense model.
        rest_s: Part of it outside the tabled layers.
    """

    def __init__(self, pruner, batch: int = 64, grid: int = 8,
                 repeats: int = 3,
                 cache_dir: str | None = DEFAULT_LATENCY_CACHE_DIR,
                 num_threads: int | None = None, progress: bool = True,
                 clock: str = 'wall'):
        self.options = dict(batch=batch, grid=grid, repeats=repeats,
                            cache_dir=cache_dir, num_threads=num_threads,
                            clock=clock)
        graph, model = pruner.graph, pruner.model
        always = graph.num_units
        self.records = {}
        candidates = {}
        for name, rec in graph.layers.items():
            if rec.kind not in ('conv', 'linear'):
                continue
            try:
                m = model.get_submodule(name)
            except AttributeError:
                continue
            if not isinstance(m, TIMED_TYPES):
                continue
            cin = m.in_features if isinstance(m, nn.Linear) else m.in_channels
            cout = m.out_features if isinstance(m, nn.Linear) \
                else m.out_channels
            sides = []
            for role, n in (('in', cin), ('out', cout)):
                idx = rec.in_index if role == 'in' else rec.out_index
                if idx is None or not bool((idx != always).any()):
                    sides.append(None)
                    continue
                spaces = [s for s, _, _ in graph.channel_map(name, role)]
                div = min((pruner.divisor_of(s) for s in spaces), default=1)
                sides.append(width_candidates(n, div, grid))
            candidates[name] = tuple(sides)
            self.records[name] = (rec, cin, cout)
        if not candidates:
            raise ValueError(f'latency model: {type(model).__name__} has no '
                             'conv2d / linear layer to time')
        with_bn = {conv for conv, _ in graph.conv_bn_pairs}
        self.table = LatencyTable(model, pruner.example_inputs, candidates,
                                  with_bn, batch=batch,
                                  num_threads=num_threads, repeats=repeats,
                                  cache_dir=cache_dir, progress=progress,
                                  clock=clock)
        self.table.build()
        self._graph = graph
        self._out_elems = self._output_elements(model, pruner.example_inputs)
        self.dense_s = float(self.table.model_s)
        self.rest_s = max(0.0, self.dense_s - self.table.dense_total())
        self._dense_act = sum(self._out_elems.values()) or 1.0

    def _output_elements(self, model: nn.Module, inputs) -> dict[str, float]:
        """Output elements per sample of each tabled layer (all calls)."""
        elems = dict.fromkeys(self.records, 0.0)
        handles = []
        for name in self.records:
            def hook(mod, args, out, name=name):
                elems[name] += out[0].numel()
            handles.append(model.get_submodule(name)
                           .register_forward_hook(hook))
        was = model.training
        model.eval()
        try:
            with torch.inference_mode():
                model(*inputs)
        finally:
            for h in handles:
                h.remove()
            model.train(was)
        return elems

    def widths(self, subnet: Mapping[str, torch.Tensor] | None
               ) -> dict[str, tuple[float, float]]:
        """``{layer: (kept inputs, kept outputs)}`` for ``subnet``."""
        gmask = self._graph.global_mask(subnet).to(torch.float64)
        res = {}
        for name, (rec, cin, cout) in self.records.items():
            ci = cin if rec.in_index is None else \
                float(gmask[rec.in_index].sum())
            co = cout if rec.out_index is None else \
                float(gmask[rec.out_index].sum())
            res[name] = (ci, co)
        return res

    def estimate(self, subnet: Mapping[str, torch.Tensor] | None = None
                 ) -> float:
        """Estimated seconds per batch of the model exported for
        ``subnet`` (None: the spaces' current masks)."""
        widths = self.widths(subnet)
        act = sum(self._out_elems[n] * widths[n][1] / self.records[n][2]
                  for n in self.records)
        return self.table.total(widths) + \
            self.rest_s * act / self._dense_act

    # -- latency-efficient allocation ------------------------------------------
    def _layer_costs(self):
        """Per tabled layer: how its kept widths follow the spaces, and its
        MACs per (kept input x kept output) channel pair."""
        if getattr(self, '_costs', None) is not None:
            return self._costs
        graph, costs = self._graph, {}
        for name, (rec, cin, cout) in self.records.items():
            spec = self.table.specs[self.table.layers[name][0]]
            sides = []
            for role, n in (('in', cin), ('out', cout)):
                idx = rec.in_index if role == 'in' else rec.out_index
                parts = [] if idx is None else \
                    [(s, units) for s, _, units in graph.channel_map(name,
                                                                    role)]
                sides.append((n - sum(int(u.numel()) for _, u in parts),
                              parts))
            k = math.prod(spec.kernel_size) if spec.kind == 'conv2d' else 1
            # MACs per sample of all calls = out elements x K x inputs per
            # group; a grouped conv keeps its inputs per group
            macs = self._out_elems[name] / cout * k * (
                cin / spec.groups if spec.tied else 1.0)
            costs[name] = (sides, macs, spec.tied)
        self._costs = costs
        return costs

    def _layer_value(self, name, kept) -> tuple[float, float]:
        """``(estimated seconds, MACs)`` of layer ``name`` when the spaces
        keep ``kept[space]`` (a bool mask)."""
        sides, macs, tied = self._costs[name]
        w = [fixed + sum(int(kept[s][u].sum()) for s, u in parts)
             for fixed, parts in sides]
        cout = self.records[name][2]
        sec = self.table.layer_latency(name, w[0], w[1]) + \
            self.rest_s * self._out_elems[name] * w[1] / cout / \
            self._dense_act
        return sec, macs * w[1] * (1.0 if tied else w[0])

    def efficient_subnet(self, sampler, keep: float,
                         scores: Mapping[str, Any] | None = None,
                         min_keep: float = 0.25) -> dict[str, torch.Tensor]:
        """Greedy widths for an estimated latency of ``keep`` x the dense
        model's that keep the most MACs (the accuracy proxy).

        Starting dense, each step removes channels (lowest scores first)
        from the space whose cut saves the most estimated latency per MAC
        lost, until the estimate reaches the target: cuts go where latency
        falls faster than MACs, which raises speed-up / MACs reduction.

        Args:
            sampler: The pruner's ``SubnetSampler`` (divisor, minimum).
            keep: Estimated latency keep ratio.
            scores: Space scores (which channels of a space go first).
            min_keep: No space keeps fewer than this fraction of its units.
        """
        costs = self._layer_costs()
        scores = sampler.scores(scores)
        order = {n: torch.argsort(-s, stable=True) for n, s in scores.items()}
        count = {n: sp.num_channels for n, sp in sampler.spaces.items()}
        floor = {n: max(1, sampler.min_channels, math.ceil(min_keep * c))
                 for n, c in count.items()}

        def mask(n, k):
            m = torch.zeros(count[n], dtype=torch.bool)
            m[order[n][:k]] = True
            return m

        def options(n):
            """Kept counts to try: the next divisor steps and grid widths
            (a slow width, e.g. 24 of 32, must not hide a fast 16)."""
            g, k, c = sampler.granule(n), kept_n[n], count[n]
            first = (k - 1) // g * g  # the next multiple of g
            res = {first - g * j for j in range(4)}
            res |= {int(c * j / grid) // g * g for j in range(grid)
                    if int(c * j / grid) < k}
            return sorted((x for x in res if x >= max(floor[n], 1)),
                          reverse=True)[:6]

        kept_n = dict(count)
        kept = {n: mask(n, c) for n, c in count.items()}
        layers_of = {n: set() for n in count}
        for name, (sides, _, _) in costs.items():
            for _, parts in sides:
                for s, _ in parts:
                    layers_of[s].add(name)
        value = {name: self._layer_value(name, kept) for name in costs}
        total = sum(v[0] for v in value.values())
        target = keep * self.dense_s
        grid = self.options['grid']
        cand: dict[str, tuple] = {}

        def evaluate(n):
            cand.pop(n, None)
            for k2 in options(n) if layers_of[n] else ():
                trial = dict(kept)
                trial[n] = mask(n, k2)
                new = {name: self._layer_value(name, trial)
                       for name in layers_of[n]}
                dsec = sum(value[x][0] - new[x][0] for x in new)
                dmac = sum(value[x][1] - new[x][1] for x in new)
                eff = dsec / max(dmac, 1e-9)
                if n not in cand or eff > cand[n][0]:
                    cand[n] = (eff, k2, new, trial[n], dsec)

        for n in count:
            evaluate(n)
        while total > target and cand:
            n = max(cand, key=lambda x: cand[x][0])
            _, k2, new, m, dsec = cand[n]
            kept_n[n], kept[n] = k2, m
            value.update(new)
            total -= dsec
            dirty = {n} | {s for x in new for _, parts in costs[x][0]
                           for s, _ in parts}
            for s in dirty:
                evaluate(s)
        return kept


# one LatencyModel per pruner (rebuilt when the options change)
_MODELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def latency_model_of(pruner, **options) -> LatencyModel:
    """The pruner's :class:`LatencyModel` with ``options`` (built, or
    loaded from the cache, on first use); calibration options and
    ``min_keep`` are ignored here."""
    options = {k: v for k, v in options.items()
               if k not in CALIBRATION_OPTIONS and k != 'min_keep'}
    lm = _MODELS.get(pruner)
    if lm is None or any(lm.options.get(k) != v for k, v in options.items()
                         if k != 'progress'):
        lm = LatencyModel(pruner, **options)
        _MODELS[pruner] = lm
    return lm
