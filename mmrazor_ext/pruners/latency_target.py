"""Latency targets: choose widths by measured per-layer latency.

:class:`LatencyModel` builds a
:class:`~mmrazor_ext.estimators.latency_table.LatencyTable` for every conv /
linear layer of a pruner's graph, with candidate widths at ``1/grid`` steps
of each layer's width rounded to the pruner's per-space divisor, and
estimates the latency of a subnet as

    sum of table lookups at the kept (input, output) widths
    + rest of the dense model's measured time x kept activation fraction

where the *rest* (pooling, residual adds, BN / activations not timed with
their layer) is scaled by the kept fraction of the tabled layers' output
elements, since that work is element-wise. :func:`sample_subnet_for_latency`
bisects the prune ratio on that estimate, as the MACs target does on MACs.

Target config (``target=dict(mode='latency', ...)``, see
:func:`check_latency_target`): ``ratio`` (keep this fraction of the dense
latency) or ``ms`` (milliseconds per batch), ``sampling``
(``'uniform'`` | ``'global'``), ``batch`` (default 64), ``grid`` (default
8), ``repeats``, ``cache_dir``, ``num_threads``, ``clock``
(``'wall'`` | ``'cpu'``), ``tol``.
"""
from __future__ import annotations

import math
import weakref
from collections.abc import Mapping
from typing import Any

import torch
from mmengine.logging import print_log
from torch import nn

from mmrazor_ext.estimators.latency import CLOCKS
from mmrazor_ext.estimators.latency_table import (
    DEFAULT_LATENCY_CACHE_DIR,
    TIMED_TYPES,
    LatencyTable,
)

__all__ = ['LATENCY_TABLE_OPTIONS', 'LATENCY_TARGET_KEYS', 'LatencyModel',
           'check_latency_target', 'latency_model_of', 'sample_subnet_for_latency',
           'width_candidates']

#: keys of ``target=dict(mode='latency', ...)``
LATENCY_TARGET_KEYS = ('mode', 'ratio', 'ms', 'sampling', 'batch', 'grid',
                       'repeats', 'cache_dir', 'num_threads', 'clock', 'tol')
#: LatencyModel options a latency target may set
LATENCY_TABLE_OPTIONS = ('batch', 'grid', 'repeats', 'cache_dir',
                         'num_threads', 'clock')


def _int_field(target: dict, key: str, low: int) -> None:
    v = target.get(key)
    if v is not None and (isinstance(v, bool) or not isinstance(v, int)
                          or v < low):
        raise ValueError(f'target.{key} must be an int >= {low}, got {v!r}')


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
    sampling = target.setdefault('sampling', 'global')
    if sampling not in ('uniform', 'global'):
        raise ValueError("target.sampling must be 'uniform' or 'global' for "
                         f"mode='latency', got {sampling!r}")
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
    return target


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


# one LatencyModel per pruner (rebuilt when the options change)
_MODELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def latency_model_of(pruner, **options) -> LatencyModel:
    """The pruner's :class:`LatencyModel` with ``options`` (built, or
    loaded from the cache, on first use)."""
    lm = _MODELS.get(pruner)
    if lm is None or any(lm.options.get(k) != v for k, v in options.items()
                         if k != 'progress'):
        lm = LatencyModel(pruner, **options)
        _MODELS[pruner] = lm
    return lm


def sample_subnet_for_latency(pruner, ratio: float | None = None,
                              scores: Mapping[str, Any] | None = None,
                              mode: str = 'uniform', ms: float | None = None,
                              tol: float = 0.01, **options
                              ) -> tuple[dict[str, torch.Tensor], dict]:
    """Bisect the prune ratio until the estimated latency is ``ratio`` of
    the dense model's (or ``ms`` milliseconds per batch).

    Args:
        pruner: The :class:`~mmrazor_ext.pruners.ChannelPruner`.
        ratio: Latency keep ratio in (0, 1).
        scores: Space scores (higher kept first).
        mode: ``'uniform'`` or ``'global'`` (as the MACs target).
        ms: Target milliseconds per batch instead of ``ratio``.
        tol: Relative tolerance on the latency keep ratio.
        **options: :class:`LatencyModel` options (``batch``, ``grid``,
            ``repeats``, ``cache_dir``, ``num_threads``, ``progress``).

    Returns:
        ``(subnet, report)``: the report says what was estimated (dense /
        estimated ms, ratios, the table file).
    """
    target = {'mode': 'latency', 'sampling': mode, 'tol': tol}
    if ratio is not None:
        target['ratio'] = ratio
    if ms is not None:
        target['ms'] = ms
    check_latency_target(target)
    lm = latency_model_of(pruner, **options)
    err = 0.0
    if ms is not None:
        ratio = ms / 1e3 / lm.dense_s
    if ratio >= 1:
        print_log(f'latency target {ms} ms: the dense model already runs in '
                  f'{lm.dense_s * 1e3:.2f} ms; nothing pruned',
                  logger='current', level=30)
        best = pruner.sampler.uniform(0.0, scores)
    else:
        best, err = pruner.sampler.for_macs(ratio, scores, lm.estimate,
                                            lm.dense_s, mode, tol)
    est = lm.estimate(best)
    report = {
        'target_ratio': ratio, 'target_ms': ms, 'mode': mode,
        'batch': lm.options['batch'], 'dense_ms': lm.dense_s * 1e3,
        'estimated_ms': est * 1e3, 'estimated_ratio': est / lm.dense_s,
        'macs_ratio': pruner.estimate_flops(best) / pruner.original_flops,
        'table': lm.table.path, 'table_from_cache': lm.table.from_cache}
    if err > tol:
        print_log(f'sample_subnet_for_latency: closest estimated latency '
                  f'ratio {est / lm.dense_s:.4f} for target {ratio:.4f}',
                  logger='current', level=30)
    return best, report
