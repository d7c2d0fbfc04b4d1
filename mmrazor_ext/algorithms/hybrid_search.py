"""Hybrid evolutionary search (the seed's "hybrid_search", geatpy -> Optuna).

:class:`HybridSearch` is the model: a trained ``architecture``, its
:class:`~mmrazor_ext.pruners.ChannelPruner` and a channel metric. A
candidate is a keep ratio per ChannelSpace from a discrete grid; which
channels are kept inside a space follows the metric's scores. The first
trials are metric-guided *global* samples (one threshold over all spaces,
:meth:`ChannelPruner.sample_subnet_diff`, at several ratios and FLOPs
budgets) plus uniform ratios, snapped to the grid -- the hybrid part -- and
NSGA-II evolves from there.

:class:`HybridSearchLoop` is the ``train_cfg`` that runs the search through
``tools/train.py``: candidates are scored by
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
* ``search_pareto.png``.
"""
from __future__ import annotations

import json
import os
import os.path as osp
from collections.abc import Iterable, Sequence

import torch
from mmengine.dist import barrier, get_dist_info
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.runner.base_loop import BaseLoop
from torch.utils.data import DataLoader, Subset

from mmrazor_ext.estimators import get_model_complexity
from mmrazor_ext.registry import LOOPS, MODELS
from mmrazor_ext.search import (
    AdaptiveBNEvaluator,
    KeepRatioSpace,
    OptunaSearcher,
    pareto_front,
    ratio_grid,
)
from mmrazor_ext.visualization.pareto import plot_pareto

from .channel_pruning import OneShotPruning

__all__ = ['HybridSearch', 'HybridSearchLoop', 'load_search_results',
           'run_hybrid_search', 'write_search_results']

_RESULTS_FORMAT = 'mmrazor_ext.search_results'


@MODELS.register_module()
class HybridSearch(OneShotPruning):
    """A trained model, its pruner and metric: builds the search space.

    Args:
        architecture: The trained model config (or module).
        input_shape: Example input shape for tracing.
        metric: Channel metric deciding which channels a ratio keeps.
        grid: ``dict(low=0.3, high=1.0, step=0.1)`` keep-ratio grid.
        seeds: Metric-guided first candidates, see
            :class:`~mmrazor_ext.search.KeepRatioSpace`.
        **kwargs: :class:`OneShotPruning` arguments (``pruner``,
            ``init_checkpoint``, ``metric_batches``, ``cdp_by``,
            ``data_preprocessor``).
    """

    def __init__(self, *args, grid: dict | None = None,
                 seeds: dict | None = None, **kwargs):
        kwargs.setdefault('bn_recalib_batches', 0)
        super().__init__(*args, **kwargs)
        g = dict(low=0.3, high=1.0, step=0.1)
        g.update(grid or {})
        unknown = set(g) - {'low', 'high', 'step'}
        if unknown:
            raise KeyError(f'grid: unknown keys {sorted(unknown)}')
        self.grid = ratio_grid(g['low'], g['high'], g['step'])
        self.seeds = dict(seeds or {})
        KeepRatioSpace(self.pruner, {}, self.grid, self.seeds)  # check keys
        self.space: KeepRatioSpace | None = None

    def build_space(self, batches: Iterable) -> KeepRatioSpace:
        """Score channels once with the metric; the search space."""
        contents = self.collect_contents(batches)
        metric = {k: v for k, v in self.metric.items()
                  if k != 'n_points_per_fm'}
        scores = self.pruner.get_metric_local(metric, contents)
        self.space = KeepRatioSpace(self.pruner, scores, self.grid,
                                    self.seeds)
        return self.space


def run_hybrid_search(space: KeepRatioSpace, evaluator: AdaptiveBNEvaluator,
                      searcher: OptunaSearcher, n_trials: int,
                      use_seeds: bool = True, progress: bool = True,
                      timeout: float | None = None) -> OptunaSearcher:
    """Seed (once per study) and run the search; plain Python, no Runner."""
    if use_seeds:
        n = searcher.enqueue(space.seed_candidates())
        if n:
            print_log(f'search: enqueued {n} metric-guided seed candidates',
                      logger='current')

    def evaluate(params):
        return evaluator.evaluate(space.subnet_from_ratios(params))

    searcher.optimize(evaluate, space.flops_ratio, n_trials,
                      progress=progress, timeout=timeout)
    return searcher


def _atomic_json(path: str, data) -> None:
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


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
    objectives = ['top1', 'flops'] + (
        ['latency_ms'] if 'latency_ms' in searcher.objectives else [])
    front = pareto_front(records, objectives)
    total = pruner.original_flops
    total_params = get_model_complexity(pruner.model,
                                        pruner.example_inputs)['params']
    was = pruner.subnet
    entries = []
    try:
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
    finally:
        if was is None:
            pruner.clear_subnet()
        else:
            pruner.set_subnet(was)
    data = {
        'format': _RESULTS_FORMAT, 'version': 1,
        'study_name': searcher.study_name, 'storage': searcher.storage_url,
        'objectives': list(searcher.objectives),
        'metric': metric, 'grid': space.grid,
        'original_flops': total, 'original_params': total_params,
        'n_completed': len(searcher.completed()),
        'n_evaluated': len(records), 'pareto': entries, 'best': best,
    }
    _atomic_json(osp.join(out_dir, 'search_results.json'), data)
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


# -- the Runner loop -----------------------------------------------------------------
def _fixed_loader(loader: DataLoader, num_samples: int, offset: int = 0
                  ) -> DataLoader:
    """The same samples in the same order on every worker and every run:
    a seeded permutation of the dataset, cut to ``num_samples`` after
    ``offset`` (no distributed sampler)."""
    ds = loader.dataset
    n = len(ds)
    if offset + num_samples > n:
        raise ValueError(f'need {offset + num_samples} samples, the dataset '
                         f'has {n}')
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    idx = perm[offset:offset + num_samples].tolist()
    return DataLoader(Subset(ds, idx), batch_size=loader.batch_size,
                      shuffle=False, collate_fn=loader.collate_fn,
                      num_workers=0)


@LOOPS.register_module()
class HybridSearchLoop(BaseLoop):
    """Runs the hybrid search as the Runner's ``train_cfg``.

    Args:
        runner: The Runner.
        dataloader: Training dataloader (config dict or loader).
        n_trials: Completed trials wanted in the study (resumes count).
        objectives: ``('top1', 'flops')`` (Pareto, NSGA-II) or ``('top1',)``
            with ``max_flops_ratio`` (constrained).
        sampler: ``dict(type='nsga2', population_size=20, seed=0)``.
        storage: Optuna storage URL; default ``sqlite:///<work_dir>/search.db``.
        study_name: Study name (default: the config's file name).
        max_flops_ratio / min_flops_ratio: FLOPs constraint (fractions).
        targets: FLOPs fractions for which the best subnet JSON is written.
        bn_batches: K training batches for adaptive BN.
        eval_source: ``'val'`` (the val dataloader's dataset) or ``'train'``
            (held-out training samples disjoint from the BN batches).
        eval_samples: Held-out samples per candidate.
        eval_mode: ``'masked'`` or ``'export'`` (see the evaluator).
        latency: Measure CPU latency of each candidate (``latency_ms``).
        result_dir: Where results go (default: the directory of the
            algorithm's ``init_checkpoint``, else the work dir).
        write_results: False for extra workers whose peers write them.
        use_seeds: Enqueue the metric-guided seeds into a new study.
        timeout: Seconds after which this process stops searching.
        progress: Show a tqdm progress bar.
    """

    def __init__(self, runner, dataloader, n_trials: int = 100,
                 objectives: Sequence[str] = ('top1', 'flops'),
                 sampler: dict | None = None, storage: str | None = None,
                 study_name: str | None = None,
                 max_flops_ratio: float | None = None,
                 min_flops_ratio: float | None = None,
                 targets: Sequence[float] = (0.5,), bn_batches: int = 10,
                 eval_source: str = 'val', eval_samples: int = 1000,
                 eval_mode: str = 'masked', latency: bool = False,
                 result_dir: str | None = None, write_results: bool = True,
                 use_seeds: bool = True, timeout: float | None = None,
                 progress: bool = True):
        super().__init__(runner, dataloader)
        if eval_source not in ('val', 'train'):
            raise ValueError(f"train_cfg.eval_source must be 'val' or "
                             f"'train', got {eval_source!r}")
        if n_trials < 0:
            raise ValueError(f'train_cfg.n_trials must be >= 0, got '
                             f'{n_trials}')
        self.n_trials = int(n_trials)
        self.objectives = tuple(objectives)
        self.sampler = sampler
        self.storage = storage or \
            f'sqlite:///{osp.abspath(runner.work_dir)}/search.db'
        self.study_name = study_name or osp.splitext(osp.basename(
            runner.cfg.filename or 'search'))[0]
        self.max_flops_ratio = max_flops_ratio
        self.min_flops_ratio = min_flops_ratio
        self.targets = tuple(targets)
        self.bn_batches = int(bn_batches)
        self.eval_source = eval_source
        self.eval_samples = int(eval_samples)
        self.eval_mode = eval_mode
        self.latency = bool(latency)
        self.result_dir = result_dir
        self.write_results = bool(write_results)
        self.use_seeds = bool(use_seeds)
        self.timeout = timeout
        self.progress = progress
        self._iter = 0

    # attributes the Runner reads from a train loop
    @property
    def iter(self) -> int:
        return self._iter

    @property
    def max_iters(self) -> int:
        return self.n_trials

    @property
    def epoch(self) -> int:
        return 0

    @property
    def max_epochs(self) -> int:
        return 1

    def _algo(self) -> HybridSearch:
        model = self.runner.model
        model = model.module if is_model_wrapper(model) else model
        if not isinstance(model, HybridSearch):
            raise TypeError(f'HybridSearchLoop needs model type HybridSearch, '
                            f'got {type(model).__name__}')
        return model

    def run(self):
        runner = self.runner
        algo = self._algo()
        algo.eval()
        rank, world = get_dist_info()
        worker = int(os.environ.get('MMRAZOR_SEARCH_WORKER', rank))
        train = self.dataloader
        bs = train.batch_size
        n_bn = self.bn_batches * bs
        bn_loader = _fixed_loader(train, n_bn)
        if self.eval_source == 'train':
            eval_loader = _fixed_loader(train, self.eval_samples, n_bn)
        else:
            val = runner.val_dataloader
            eval_loader = _fixed_loader(
                val, min(self.eval_samples, len(val.dataset)))
        print_log(f'search worker {worker}: scoring channels with '
                  f'{algo.metric["type"]}', logger='current')
        space = algo.build_space(_fixed_loader(
            train, min(len(train.dataset), algo.metric_batches * bs)))
        evaluator = AdaptiveBNEvaluator(
            algo.pruner, bn_loader, eval_loader, bn_batches=self.bn_batches,
            latency=self.latency, mode=self.eval_mode)
        searcher = OptunaSearcher(
            space.names, space.grid, objectives=self.objectives,
            sampler=self.sampler, storage=self.storage,
            study_name=self.study_name,
            max_flops_ratio=self.max_flops_ratio,
            min_flops_ratio=self.min_flops_ratio, worker_index=worker)
        run_hybrid_search(space, evaluator, searcher, self.n_trials,
                          use_seeds=self.use_seeds,
                          progress=self.progress and rank == 0,
                          timeout=self.timeout)
        self._iter = len(searcher.completed())
        if world > 1:
            barrier()
        if rank == 0 and self.write_results:
            out = self.result_dir or (
                osp.dirname(osp.abspath(algo.init_checkpoint))
                if algo.init_checkpoint else runner.work_dir)
            write_search_results(space, searcher, out, self.targets,
                                 title=self.study_name,
                                 metric=algo.metric['type'])
        return algo
