"""Latency targets, second half: choosing a subnet for a target latency
on a :class:`~.latency_target.LatencyModel` and correcting the target by
timing the exported subnet (:class:`LatencyCalibrator`, the closed loop of
:func:`sample_subnet_for_latency`)."""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from mmengine.logging import print_log

from mmrazor_ext.estimators.latency_table import (
    RatioCache,
    measure_ratio,
    random_batch,
)
from mmrazor_ext.graph import export_pruned

from .latency_target import (
    LatencyModel,
    check_calibration_options,
    check_latency_target,
    latency_model_of,
)

__all__ = ['LatencyCalibrator', 'sample_subnet_for_latency']


class LatencyCalibrator:
    """Measures the real latency ratio of exported subnets (cached).

    Layers timed alone miss what they share in the whole model (caches,
    per-call overhead), so a subnet chosen on the table lands off target.
    This times the exported subnet against the dense model (the table's
    clock, threads and batch; in turn, fastest of ``repeats``) and caches
    the result in ``<table>_calibration.json`` under the table's key and
    the kept layer widths: a second run measures nothing.

    Args:
        pruner: The :class:`~mmrazor_ext.pruners.ChannelPruner`.
        lm: Its :class:`LatencyModel`.
        repeats: Timed rounds per measurement.

    Attributes:
        num_measurements: Subnets timed by this object (not from cache).
    """

    def __init__(self, pruner, lm: LatencyModel, repeats: int = 5):
        self.pruner, self.lm, self.repeats = pruner, lm, repeats
        path = lm.table.path
        self.cache = RatioCache(
            None if path is None else path[:-len('.json')] +
            '_calibration.json', lm.table.key)
        self.num_measurements = 0
        self._dense = None

    def key(self, subnet: Mapping[str, torch.Tensor]) -> str:
        """Cache key of ``subnet``: a hash of its kept layer widths."""
        return RatioCache.digest({n: [int(round(c)) for c in w] for n, w
                                  in self.lm.widths(subnet).items()})

    def measure(self, subnet: Mapping[str, torch.Tensor]) -> dict:
        """``{'dense_s', 'pruned_s', 'ratio', 'from_cache'}`` of ``subnet``."""
        name = self.key(subnet)
        hit = self.cache.get(name)
        if hit is not None and hit.get('repeats', 0) >= self.repeats:
            return dict(hit, from_cache=True)
        graph, model = self.pruner.graph, self.pruner.model
        if self._dense is None:  # an unmasked copy (the model may be masked)
            self._dense = export_pruned(
                model, graph, torch.ones(graph.num_units + 1,
                                         dtype=torch.bool))
        small = export_pruned(model, graph, graph.global_mask(subnet))
        table = self.lm.table
        dense_s, pruned_s = measure_ratio(
            self._dense, small, random_batch(self.pruner.example_inputs,
                                             table.batch),
            self.repeats, table.num_threads, table.clock)
        self.num_measurements += 1
        entry = {'dense_s': dense_s, 'pruned_s': pruned_s,
                 'ratio': pruned_s / dense_s, 'repeats': self.repeats}
        self.cache.put(name, entry)
        return dict(entry, from_cache=False)


def _next_target(hist: list[dict], ratio: float) -> float:
    """Next table target: secant through the last two (target, measured)
    points, or a proportional step where they do not rise."""
    t1, m1 = hist[-1]['table_target'], hist[-1]['measured_ratio']
    t = t1 * ratio / m1
    if len(hist) >= 2:
        t0, m0 = hist[-2]['table_target'], hist[-2]['measured_ratio']
        if t1 != t0 and (m1 - m0) / (t1 - t0) > 0:
            t = t1 + (ratio - m1) * (t1 - t0) / (m1 - m0)
    return min(0.999, max(0.02, t))


def sample_subnet_for_latency(pruner, ratio: float | None = None,
                              scores: Mapping[str, Any] | None = None,
                              mode: str = 'uniform', ms: float | None = None,
                              tol: float = 0.01, **options
                              ) -> tuple[dict[str, torch.Tensor], dict]:
    """Widths whose latency is ``ratio`` of the dense model's (or ``ms``
    milliseconds per batch, relative to the table's dense time): chosen on
    the table's estimate, then, with ``calibrate=True`` (default), by
    measurement: the subnet for table target ``t`` (first ``ratio``) is
    exported and timed against the dense model (:class:`LatencyCalibrator`,
    cached) and ``t`` corrected by a secant on (``t``, measured ratio), up
    to ``calib_iters`` (3) measurements or until within ``calib_tol``
    (0.03, relative); the subnet measured closest to the target wins.

    Args:
        pruner: The :class:`~mmrazor_ext.pruners.ChannelPruner`.
        ratio: Latency keep ratio in (0, 1).
        scores: Space scores (higher kept first).
        mode: ``'uniform'`` / ``'global'`` (bisect the prune ratio on the
            estimate, as the MACs target), or ``'efficient'``
            (:meth:`LatencyModel.efficient_subnet`, ``min_keep`` 0.25, or
            another candidate that keeps more MACs: :func:`_most_macs`;
            the report's ``candidate`` names the winner).
        ms: Target milliseconds per batch instead of ``ratio``.
        tol: Relative tolerance on the estimated latency keep ratio.
        **options: :class:`LatencyModel` options, ``calibrate``,
            ``calib_iters``, ``calib_repeats`` (5), ``calib_tol``,
            ``min_keep``.

    Returns:
        ``(subnet, report)``: estimated (dense / estimated ms, ratios, the
        table file) and, when calibrated, measured (``measured_ratio``,
        ``calibration`` steps) figures.
    """
    target = {'mode': 'latency', 'sampling': mode, 'tol': tol}
    if ratio is not None:
        target['ratio'] = ratio
    if ms is not None:
        target['ms'] = ms
    check_latency_target(target)
    check_calibration_options(options)
    calibrate = options.get('calibrate', True)
    iters = options.get('calib_iters') or 3
    ctol = options.get('calib_tol') or 0.03
    min_keep = options.get('min_keep') or 0.25
    lm = latency_model_of(pruner, **options)
    if ms is not None:
        ratio = ms / 1e3 / lm.dense_s

    winners: dict[int, str] = {}

    def choose(keep):
        if mode == 'efficient':
            name, sub = _most_macs(pruner, lm, keep, scores, min_keep, tol)
            winners[id(sub)] = name
            return sub, abs(lm.estimate(sub) / lm.dense_s / keep - 1)
        return pruner.sampler.for_macs(keep, scores, lm.estimate,
                                       lm.dense_s, mode, tol)

    hist: list[dict] = []
    if ratio >= 1:
        print_log(f'latency target {ms} ms: the dense model already runs in '
                  f'{lm.dense_s * 1e3:.2f} ms; nothing pruned',
                  logger='current', level=30)
        best, err = pruner.sampler.uniform(0.0, scores), 0.0
    else:
        best, err = choose(ratio)
        if calibrate:
            best, hist = _calibrate(pruner, lm, ratio, best, choose, iters,
                                    ctol, options.get('calib_repeats') or 5)
    est = lm.estimate(best)
    report = {
        'target_ratio': ratio, 'target_ms': ms, 'mode': mode,
        'batch': lm.options['batch'], 'dense_ms': lm.dense_s * 1e3,
        'estimated_ms': est * 1e3, 'estimated_ratio': est / lm.dense_s,
        'macs_ratio': pruner.estimate_flops(best) / pruner.original_flops,
        'table': lm.table.path, 'table_from_cache': lm.table.from_cache,
        'calibrated': bool(hist)}
    if id(best) in winners:
        report['candidate'] = winners[id(best)]
    if hist:  # the subnet measured closest to the target won
        report.update(calibration=hist, measured_ratio=min(
            (h['measured_ratio'] for h in hist), key=lambda m: abs(m - ratio)))
    elif err > tol:
        print_log(f'sample_subnet_for_latency: closest estimated latency '
                  f'ratio {est / lm.dense_s:.4f} for target {ratio:.4f}',
                  logger='current', level=30)
    return best, report


def _most_macs(pruner, lm, keep, scores, min_keep, tol):
    """``'efficient'`` widths: ``(name, subnet)`` of the candidate that
    keeps the most MACs among those whose estimate fits ``keep`` (within
    ``tol``) and no space below ``min_keep`` (else the closest): the greedy,
    the greedy with every space kept at least half, and uniform bisection.
    The greedy's step-by-step choice can end far from its own objective when
    the spaces' savings per MAC nearly tie: on ResNet-56 (2 threads, a
    fresh table) it kept 0.22 of the MACs where uniform widths keep 0.31
    for the same estimate."""
    subs = {'greedy': lm.efficient_subnet(pruner.sampler, keep, scores,
                                          min_keep)}
    if min_keep < 0.5:
        subs['greedy_half'] = lm.efficient_subnet(pruner.sampler, keep,
                                                  scores, 0.5)
    subs['uniform'] = pruner.sampler.for_macs(keep, scores, lm.estimate,
                                              lm.dense_s, 'uniform', tol)[0]

    def rank(item):
        sub = item[1]
        err = lm.estimate(sub) / lm.dense_s / keep - 1
        floor = all(int(m.sum()) >= math.ceil(min_keep * m.numel())
                    for m in sub.values())
        fits = err <= tol and floor
        return (fits, pruner.estimate_flops(sub) if fits else -abs(err))
    return max(subs.items(), key=rank)


def _calibrate(pruner, lm, ratio, first, choose, iters, ctol, repeats):
    """The closed loop: ``(subnet measured closest to ratio, steps)``."""
    cal = LatencyCalibrator(pruner, lm, repeats)
    hist, subs, seen, t, sub = [], [], set(), ratio, first
    for i in range(iters):
        if i:
            t_prev, t = t, _next_target(hist, ratio)
            sub = choose(t)[0]
            # widths move in divisor steps: a correction that lands on a
            # subnet measured already moves on by the same step
            for _ in range(4):
                if cal.key(sub) not in seen or \
                        not 0.02 < 2 * t - t_prev < 0.999:
                    break
                t, t_prev = 2 * t - t_prev, t
                sub = choose(t)[0]
            if cal.key(sub) in seen:
                break
        seen.add(cal.key(sub))
        m = cal.measure(sub)
        hist.append({'table_target': t,
                     'estimated_ratio': lm.estimate(sub) / lm.dense_s,
                     'measured_ratio': m['ratio'],
                     'macs_ratio': pruner.estimate_flops(sub) /
                     pruner.original_flops,
                     'from_cache': m['from_cache']})
        subs.append(sub)
        print_log(f'latency calibration {i + 1}/{iters}: table target '
                  f'{t:.3f} -> measured ratio {m["ratio"]:.3f} (target '
                  f'{ratio:.3f}{", cached" if m["from_cache"] else ""})',
                  logger='current')
        if abs(m['ratio'] / ratio - 1) <= ctol:
            break
    errs = [abs(h['measured_ratio'] / ratio - 1) for h in hist]
    return subs[errs.index(min(errs))], hist
