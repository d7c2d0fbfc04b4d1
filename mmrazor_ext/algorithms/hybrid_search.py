"""Hybrid evolutionary search (the seed's "hybrid_search", geatpy -> Optuna).

:class:`HybridSearch` is the model: a trained ``architecture``, its
:class:`~mmrazor_ext.pruners.ChannelPruner` and a channel metric. A
candidate is a keep ratio per ChannelSpace from a discrete grid; which
channels are kept inside a space follows the metric's scores. The first
trials are metric-guided *global* samples (one threshold over all spaces,
:meth:`ChannelPruner.sample_subnet_diff`, at several ratios and FLOPs
budgets) plus uniform ratios, snapped to the grid -- the hybrid part -- and
NSGA-II evolves from there.

:class:`~mmrazor_ext.engine.loops.HybridSearchLoop` is the ``train_cfg``
that runs the search through ``tools/train.py``: candidates are scored by
:class:`~mmrazor_ext.search.AdaptiveBNEvaluator` (BN recalibrated on K fixed
training batches, top-1 on a fixed held-out set), the study lives in
``sqlite:///<work_dir>/search.db`` (resumable, shared by workers: torchrun
ranks, ``tools/search.py --workers N``, or other hosts given the same
``storage`` URL). Outputs go next to the checkpoint that was searched
(``result_dir``, default the checkpoint's directory):

* ``search_results.json`` -- the Pareto front (accuracy vs FLOPs), each entry
  with its keep ratios, kept channel indices, top-1, FLOPs and params of the
  exported subnet (and latency when measured); see
  :func:`load_search_results`;
* ``subnet_flops{t}.json`` -- the most accurate candidate within each FLOPs
  target ``t`` (the :meth:`ChannelPruner.save_subnet` format; train it with
  the ``SubnetModel`` configs);
* ``subnet_latency{r}.json`` -- with a latency constraint, the most
  accurate candidate within it;
* ``search_pareto.png``.

Latency from the table (no timing per candidate): ``model.constraint=dict(
mode='latency', ratio=0.5)`` (or ``ms=``; plus the table keys of channel
pruning's latency target, ``batch``, ``grid``, ``cache_dir`` ...) skips
candidates whose estimate (``ChannelPruner.estimate_latency``) exceeds the
budget, and ``train_cfg.objectives=('top1', 'latency')`` minimises the
estimate (ms; table options from the constraint or
``model.latency_table=dict(...)``). The budget and a fingerprint of the
table are kept in the study: resuming with another table is an error.
"""
from __future__ import annotations

import json
import os
import os.path as osp
from collections.abc import Iterable, Sequence

from mmengine.logging import print_log

from mmrazor_ext.estimators import get_model_complexity
from mmrazor_ext.registry import MODELS
from mmrazor_ext.search import (
    AdaptiveBNEvaluator,
    KeepRatioSpace,
    OptunaSearcher,
    pareto_front,
    ratio_grid,
)
from mmrazor_ext.search.evaluator import preserve_subnet
from mmrazor_ext.search.latency_objective import (
    LatencyObjective,
    check_latency_config,
)
from mmrazor_ext.utils.io import atomic_write_json
from mmrazor_ext.visualization.pareto import plot_pareto

from .channel_pruning import OneShotPruning

__all__ = ['HybridSearch', 'load_search_results', 'run_hybrid_search',
           'write_search_results']

_RESULTS_FORMAT = 'mmrazor_ext.search_results'


@MODELS.register_module()
class HybridSearch(OneShotPruning):
    """A trained model, its pruner and metric: builds the search space.

    Args:
        architecture: The trained model config (or module).
        input_shape: Example input shape for tracing.
        metric: Channel metric deciding which channels a ratio keeps.
        grid: ``dict(low=0.3, high=1.0, step=0.1)`` keep-ratio grid.
        seeds: Metric-guided first candidates (``global_prune_ratios``,
            ``flops_ratios``, ``uniform``), see
            :class:`~mmrazor_ext.search.KeepRatioSpace`.
        constraint: ``dict(mode='latency', ratio=r | ms=t, batch=64,
            grid=8, repeats, cache_dir, num_threads, clock, sampling,
            tol, min_keep)``: candidates whose latency-table estimate is
            above ``r`` of the dense latency are infeasible (not
            evaluated); ``sampling`` / ``tol`` / ``min_keep`` shape the
            extra seed chosen on the table for it (no calibration: the
            budget is on the table's estimate).
        latency_table: Table options (``batch``, ``grid`` ...) of the
            ``'latency'`` objective when there is no ``constraint``.
        **kwargs: :class:`OneShotPruning` arguments (``pruner``,
            ``init_checkpoint``, ``metric_batches``, ``cdp_by``,
            ``data_preprocessor``).
    """

    def __init__(self, *args, grid: dict | None = None,
                 seeds: dict | None = None, constraint: dict | None = None,
                 latency_table: dict | None = None, **kwargs):
        kwargs.setdefault('bn_recalib_batches', 0)
        super().__init__(*args, **kwargs)
        g = dict(low=0.3, high=1.0, step=0.1)
        g.update(grid or {})
        unknown = set(g) - {'low', 'high', 'step'}
        if unknown:
            raise KeyError(f'grid: unknown keys {sorted(unknown)}')
        self.grid = ratio_grid(g['low'], g['high'], g['step'])
        # checks the keys and maps deprecated ones (once, here)
        self.seeds = KeepRatioSpace(self.pruner, {}, self.grid, seeds).seeds
        if constraint is not None and latency_table is not None:
            raise ValueError('latency_table: give the table options in '
                             'constraint (one table for both)')
        # one validated latency config: the constraint's, or table options
        self.latency_cfg = None
        if constraint is not None:
            self.latency_cfg = check_latency_config(
                constraint, 'constraint',
                extra_keys=('sampling', 'tol', 'min_keep'))
        elif latency_table is not None:
            if {'ratio', 'ms'} & set(latency_table):
                raise ValueError('latency_table: table options only; give '
                                 'a latency budget as constraint=dict(mode='
                                 "'latency', ratio=...)")
            self.latency_cfg = check_latency_config(
                dict(latency_table, mode='latency'), 'latency_table',
                budget=False)
        self.space: KeepRatioSpace | None = None

    def latency_objective(self) -> LatencyObjective:
        """The latency table of :attr:`pruner` as objective / constraint
        (default table options when none are configured)."""
        return LatencyObjective(self.pruner, self.latency_cfg or
                                {'mode': 'latency'}, 'latency_table',
                                budget=False)

    def build_space(self, batches: Iterable) -> KeepRatioSpace:
        """Score channels once with the metric; the search space."""
        contents = self.collect_contents(batches)
        metric = {k: v for k, v in self.metric.items()
                  if k != 'n_points_per_fm'}
        scores = self.pruner.get_metric_local(metric, contents)
        self.space = KeepRatioSpace(
            self.pruner, scores, self.grid, self.seeds,
            self.latency_objective() if self.latency_cfg else None)
        return self.space


def run_hybrid_search(space: KeepRatioSpace, evaluator: AdaptiveBNEvaluator,
                      searcher: OptunaSearcher, n_trials: int,
                      use_seeds: bool = True, progress: bool = True,
                      timeout: float | None = None) -> OptunaSearcher:
    """Seed (once per study) and run the search; plain Python, no Runner.

    With ``space.latency`` (or a ``'latency'`` objective, which gets the
    default table) every trial records the table's estimate (``latency``
    ms, ``latency_ratio``); its budget is a constraint checked before
    evaluating; budget and table fingerprint are bound to the study.
    """
    lat = space.latency
    if lat is None and 'latency' in searcher.objectives:
        lat = space.latency = LatencyObjective(
            space.pruner, {'mode': 'latency'}, 'latency_table', budget=False)
    constraints = {}
    if lat is not None:
        searcher.bind_meta('latency', {
            'ratio': lat.cfg.get('ratio'), 'ms': lat.cfg.get('ms'),
            'table': lat.fingerprint()})
        if lat.has_budget:
            budget = lat.budget_ratio
            constraints['latency_ratio'] = \
                lambda p: space.latency_ratio(p) - budget
    else:
        searcher.bind_meta('latency', None)
    if use_seeds:
        n = searcher.enqueue(space.seed_candidates())
        if n:
            print_log(f'search: enqueued {n} metric-guided seed candidates',
                      logger='current')

    def evaluate(params):
        subnet = space.subnet_from_ratios(params)
        res = evaluator.evaluate(subnet)
        if lat is not None:
            est = lat.estimate(subnet)
            res.update(latency=est * 1e3, latency_ratio=est / lat.dense_s)
        return res

    searcher.optimize(evaluate, space.flops_ratio, n_trials,
                      progress=progress, timeout=timeout,
                      constraints=constraints)
    return searcher


def write_search_results(space: KeepRatioSpace, searcher: OptunaSearcher,
                         out_dir: str, targets: Sequence[float] = (0.5,),
                         title: str = 'hybrid search',
                         metric: str | None = None) -> dict:
    """Pareto front (exported and re-counted), best subnet per FLOPs
    target, PNG. Returns the results dict."""
    os.makedirs(out_dir, exist_ok=True)
    pruner = space.pruner
    records = searcher.records()
    if not records:
        raise RuntimeError('search: no evaluated feasible candidate in the '
                           'study; raise n_trials or relax max_flops_ratio')
    objectives = ['top1', 'flops'] + [o for o in ('latency_ms', 'latency')
                                      if o in searcher.objectives]
    front = pareto_front(records, objectives)
    total = pruner.original_flops
    total_params = get_model_complexity(pruner.model,
                                        pruner.example_inputs)['params']
    entries = []
    with preserve_subnet(pruner, bn_stats=False):
        for i in sorted(front, key=lambda i: records[i]['flops']):
            rec = dict(records[i])
            subnet = space.subnet_from_ratios(rec['ratios'])
            pruner.set_subnet(subnet)
            small = pruner.export(check=False)
            cx = get_model_complexity(small, pruner.example_inputs)
            rec.update(flops=cx['flops'], params=cx['params'],
                       flops_ratio=cx['flops'] / total,
                       subnet={n: m.nonzero().reshape(-1).tolist()
                               for n, m in subnet.items()})
            entries.append(rec)
        best = {}
        for t in targets:
            fits = [r for r in records if r['flops_ratio'] <= t + 1e-9]
            if not fits:
                print_log(f'search: no candidate within FLOPs target {t}',
                          logger='current', level=30)
                continue
            r = max(fits, key=lambda r: (r['top1'], -r['flops']))
            pruner.set_subnet(space.subnet_from_ratios(r['ratios']))
            path = osp.join(out_dir, f'subnet_flops{t:.2f}.json')
            pruner.save_subnet(path, weights=False)
            best[f'{t:.2f}'] = {'trial': r['trial'], 'top1': r['top1'],
                                'flops': r['flops'],
                                'flops_ratio': r['flops_ratio'],
                                'subnet_file': osp.basename(path)}
        lat = space.latency
        if lat is not None and lat.has_budget:
            # records are feasible: all within the latency budget
            r = max(records, key=lambda r: (r['top1'], -r['flops']))
            pruner.set_subnet(space.subnet_from_ratios(r['ratios']))
            path = osp.join(out_dir,
                            f'subnet_latency{lat.budget_ratio:.2f}.json')
            pruner.save_subnet(path, weights=False)
            best['latency'] = {k: r.get(k) for k in (
                'trial', 'top1', 'flops', 'flops_ratio', 'latency',
                'latency_ratio')}
            best['latency']['subnet_file'] = osp.basename(path)
    data = {
        'format': _RESULTS_FORMAT, 'version': 1,
        'study_name': searcher.study_name, 'storage': searcher.storage_url,
        'objectives': list(searcher.objectives),
        'metric': metric, 'grid': space.grid,
        'original_flops': total, 'original_params': total_params,
        'n_completed': len(searcher.completed()),
        'n_evaluated': len(records), 'pareto': entries, 'best': best,
    }
    if space.latency is not None:
        data['latency'] = space.latency.summary({})
    atomic_write_json(osp.join(out_dir, 'search_results.json'), data)
    plot_pareto(records, front, osp.join(out_dir, 'search_pareto.png'),
                original_flops=total, targets=targets, title=title)
    print_log(f'search results: {len(entries)} Pareto subnets, best per '
              f'target {best}; files in {out_dir}', logger='current')
    return data


def load_search_results(path: str) -> dict:
    """Read and validate ``search_results.json``.

    Raises:
        ValueError: naming the first invalid field.
    """
    with open(path) as f:
        data = json.load(f)
    if data.get('format') != _RESULTS_FORMAT:
        raise ValueError(f'{path}: format is {data.get("format")!r}, '
                         f'expected {_RESULTS_FORMAT!r}')
    for key, typ in (('objectives', list), ('original_flops', int),
                     ('pareto', list), ('best', dict), ('grid', list)):
        if not isinstance(data.get(key), typ):
            raise ValueError(f'{path}: field {key!r} must be a '
                             f'{typ.__name__}')
    for i, e in enumerate(data['pareto']):
        for key, typ in (('trial', int), ('ratios', dict), ('top1', float),
                         ('flops', int), ('params', int), ('subnet', dict)):
            if not isinstance(e.get(key), typ) and not (
                    typ is float and isinstance(e.get(key), int)):
                raise ValueError(f'{path}: pareto[{i}].{key} must be a '
                                 f'{typ.__name__}')
        if not 0 <= e['top1'] <= 100:
            raise ValueError(f'{path}: pareto[{i}].top1 out of [0, 100]')
    return data
