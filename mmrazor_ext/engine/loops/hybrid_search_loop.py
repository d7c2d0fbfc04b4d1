"""The hybrid (NSGA-II, metric-seeded) search as the Runner's train loop.

Candidates are scored by :class:`~mmrazor_ext.search.AdaptiveBNEvaluator`
(BN recalibrated on K fixed training batches, top-1 on a fixed held-out
set); the study lives in ``sqlite:///<work_dir>/search.db`` (resumable,
shared by workers: torchrun ranks, ``tools/search.py --workers N``, or other
hosts given the same ``storage`` URL). Results go next to the checkpoint
that was searched, see
:func:`~mmrazor_ext.algorithms.hybrid_search.write_search_results`.
"""
from __future__ import annotations

import os
import os.path as osp
from collections.abc import Sequence

import torch
from mmengine.dist import barrier, get_dist_info
from mmengine.logging import print_log
from torch.utils.data import DataLoader, Subset

from mmrazor_ext.registry import LOOPS
from mmrazor_ext.utils.model import unwrap_model

from .search_loop import SearchLoop

__all__ = ['HybridSearchLoop']


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
class HybridSearchLoop(SearchLoop):
    """Runs the hybrid search of a
    :class:`~mmrazor_ext.algorithms.HybridSearch` model as the Runner's
    ``train_cfg``; its iterations are the study's completed trials.

    Args:
        runner: The Runner.
        dataloader: Training dataloader (config dict or loader).
        n_trials: Completed trials wanted in the study (resumes count).
        objectives: ``('top1', 'flops')`` (Pareto, NSGA-II) or ``('top1',)``
            with ``max_flops_ratio`` (constrained); ``'latency'`` (the
            latency table's estimate in ms; table options from
            ``model.constraint`` or ``model.latency_table``) may replace or
            join ``'flops'``.
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
        from mmrazor_ext.search.optuna_searcher import check_n_trials
        self.n_trials = check_n_trials(n_trials, 'train_cfg.n_trials')
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

    @property
    def max_iters(self) -> int:
        return self.n_trials

    def _algo(self):
        # lazily: algorithms/ sits above engine/ (see the package docstring)
        from mmrazor_ext.algorithms.hybrid_search import HybridSearch
        model = unwrap_model(self.runner.model)
        if not isinstance(model, HybridSearch):
            raise TypeError(f'HybridSearchLoop needs model type HybridSearch, '
                            f'got {type(model).__name__}')
        return model

    def run(self):
        """Score channels, search (resuming the study), write the results."""
        from mmrazor_ext.algorithms.hybrid_search import (
            run_hybrid_search,
            write_search_results,
        )
        from mmrazor_ext.search import AdaptiveBNEvaluator, OptunaSearcher
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
