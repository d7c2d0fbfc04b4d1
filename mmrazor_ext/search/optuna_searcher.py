"""Optuna-based subnet search over discrete per-space keep ratios.

The search space has one categorical parameter per ChannelSpace: its keep
ratio, from a grid such as 0.3 ... 1.0 step 0.1. A candidate's channels are
chosen by metric score inside each space, so the searcher decides *how
many* channels and the metric decides *which* ("hybrid"); metric-guided
global samples at several ratios are enqueued as the first trials.

The study lives in an Optuna storage (default SQLite in the work dir):

* a killed search resumes: completed trials stay, new trial numbers
  continue, and the run stops when the study holds ``n_trials`` completed
  trials; trials left RUNNING by a dead process are failed by the heartbeat
  after ``grace_period`` s and re-queued once (``RetryFailedTrialCallback``);
* several processes (``tools/search.py --workers N``, torchrun ranks, or
  other hosts with the same storage URL) share one study; each stops when
  the study is complete.

Objectives: ``top1`` (maximised), ``flops`` / ``params`` / ``latency_ms``
(minimised). With one objective, ``max_flops_ratio`` makes it a constrained
search; with two or more, NSGA-II finds the Pareto front. Candidates that
violate the FLOPs constraint are not evaluated (their FLOPs are known
exactly without data) and are marked infeasible for the sampler.
"""
from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import optuna
from mmengine.logging import print_log
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

from mmrazor_ext.registry import SEARCHERS

__all__ = ['OptunaSearcher', 'ratio_grid', 'pareto_front']

_DIRECTIONS = {'top1': 'maximize', 'flops': 'minimize',
               'params': 'minimize', 'latency_ms': 'minimize'}
_SAMPLERS = ('nsga2', 'tpe', 'random')
optuna.logging.set_verbosity(optuna.logging.WARNING)


def ratio_grid(low: float = 0.3, high: float = 1.0, step: float = 0.1
               ) -> list[float]:
    """Keep ratios ``low, low + step, ..., high`` (rounded to 1e-6)."""
    if not 0 < low <= high <= 1 or step <= 0:
        raise ValueError(f'ratio grid needs 0 < low <= high <= 1 and step > '
                         f'0, got low={low}, high={high}, step={step}')
    n = int(math.floor((high - low) / step + 1e-9)) + 1
    grid = [round(low + i * step, 6) for i in range(n)]
    if grid[-1] < high - 1e-9:
        grid.append(round(high, 6))
    return grid


def pareto_front(points: Sequence[Mapping[str, float]],
                 objectives: Sequence[str]) -> list[int]:
    """Indices of the non-dominated points (all objectives, their
    directions from ``top1`` max / others min)."""
    def key(p):
        return [(-p[o] if _DIRECTIONS[o] == 'maximize' else p[o])
                for o in objectives]
    keys = [key(p) for p in points]
    front = []
    for i, a in enumerate(keys):
        dominated = any(
            all(b[k] <= a[k] for k in range(len(a))) and b != a
            for j, b in enumerate(keys) if j != i)
        if not dominated:
            front.append(i)
    return front


def _serialize_sqlite(engine) -> None:
    """Make every SQLite transaction take the write lock at BEGIN.

    SQLite ignores ``SELECT ... FOR UPDATE``: with its default deferred
    transactions two workers can both read an enqueued trial as WAITING and
    both claim it (Optuna then fails with "Cannot tell a COMPLETE trial").
    ``BEGIN IMMEDIATE`` serialises the read-then-write; the database work is
    tiny next to evaluating a candidate.
    """
    from sqlalchemy import event

    @event.listens_for(engine, 'connect')
    def _no_implicit_begin(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # SQLAlchemy issues BEGIN itself

    @event.listens_for(engine, 'begin')
    def _begin_immediate(conn):
        conn.exec_driver_sql('BEGIN IMMEDIATE')

    engine.dispose()  # pooled connections were opened without the hooks


def _storage(url: str | None, heartbeat: int, grace: int):
    if url is None:
        return None  # in memory
    sqlite = url.startswith('sqlite')
    if url.startswith('sqlite:///'):
        path = url[len('sqlite:///'):]
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with warnings.catch_warnings():
        # heartbeats are marked experimental in Optuna; they are what makes
        # a killed worker's trial retry
        warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
        storage = RDBStorage(
            url,
            engine_kwargs={'connect_args': {'timeout': 120}}
            if sqlite else None,
            heartbeat_interval=heartbeat, grace_period=grace,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                max_retry=1))
    if sqlite:
        _serialize_sqlite(storage.engine)
    return storage


@SEARCHERS.register_module()
class OptunaSearcher:
    """Discrete keep-ratio search over named channel spaces.

    Args:
        spaces: Names of the searched channel spaces (one parameter each).
        grid: Allowed keep ratios (e.g. :func:`ratio_grid` ``(0.3, 1, 0.1)``).
        objectives: Any of ``top1``, ``flops``, ``params``, ``latency_ms``.
        sampler: ``dict(type='nsga2'|'tpe'|'random', seed=0,
            population_size=20)`` (``population_size`` for NSGA-II).
        storage: Optuna storage URL (``sqlite:///path/search.db``, any
            SQLAlchemy URL) or None for an in-memory study.
        study_name: Name of the study inside the storage.
        max_flops_ratio: FLOPs constraint (fraction of the original MACs):
            candidates above it are infeasible and not evaluated.
        min_flops_ratio: Optional lower bound (keeps a Pareto search near
            the budgets of interest).
        worker_index: Added to the sampler seed so that workers sharing a
            study propose different candidates.
        heartbeat_interval: Seconds between a running trial's heartbeats.
        grace_period: A RUNNING trial without heartbeat for this long is
            failed (and its parameters re-queued once).
    """

    def __init__(self, spaces: Sequence[str], grid: Sequence[float],
                 objectives: Sequence[str] = ('top1', 'flops'),
                 sampler: dict | None = None, storage: str | None = None,
                 study_name: str = 'search',
                 max_flops_ratio: float | None = None,
                 min_flops_ratio: float | None = None,
                 worker_index: int = 0, heartbeat_interval: int = 10,
                 grace_period: int = 60):
        self.spaces = list(spaces)
        if not self.spaces:
            raise ValueError('OptunaSearcher: no channel spaces to search')
        self.grid = sorted({round(float(g), 6) for g in grid})
        if not self.grid or not all(0 < g <= 1 for g in self.grid):
            raise ValueError(f'grid: keep ratios must be in (0, 1], got '
                             f'{list(grid)}')
        self.objectives = tuple(objectives)
        bad = [o for o in self.objectives if o not in _DIRECTIONS]
        if not self.objectives or bad:
            raise ValueError(f'objectives: unknown {bad} (choose from '
                             f'{sorted(_DIRECTIONS)})')
        for name, v in (('max_flops_ratio', max_flops_ratio),
                        ('min_flops_ratio', min_flops_ratio)):
            if v is not None and not 0 < v <= 1:
                raise ValueError(f'{name} must be in (0, 1], got {v!r}')
        self.max_flops_ratio = max_flops_ratio
        self.min_flops_ratio = min_flops_ratio
        sampler = dict(sampler or dict(type='nsga2'))
        kind = sampler.pop('type', 'nsga2')
        if kind not in _SAMPLERS:
            raise ValueError(f'sampler.type must be one of {_SAMPLERS}, got '
                             f'{kind!r}')
        seed = sampler.pop('seed', 0)
        seed = None if seed is None else int(seed) + int(worker_index)
        if kind == 'nsga2':
            self.sampler = optuna.samplers.NSGAIISampler(seed=seed, **sampler)
        elif kind == 'tpe':
            self.sampler = optuna.samplers.TPESampler(seed=seed, **sampler)
        else:
            if sampler:
                raise ValueError(f'sampler: unknown keys {sorted(sampler)} '
                                 'for random')
            self.sampler = optuna.samplers.RandomSampler(seed=seed)
        self.storage_url = storage
        self.study_name = study_name
        for attempt in range(5):
            try:
                self.study = optuna.create_study(
                    storage=_storage(storage, heartbeat_interval,
                                     grace_period),
                    sampler=self.sampler, study_name=study_name,
                    directions=[_DIRECTIONS[o] for o in self.objectives],
                    load_if_exists=True)
                break
            except Exception as e:  # noqa: BLE001
                # Workers starting together race to create the tables /
                # the study; the loser finds them on the next attempt.
                if attempt == 4 or 'already exists' not in str(e) and \
                        'UNIQUE constraint' not in str(e):
                    raise
                time.sleep(0.5 + attempt)
        self._check_study()
        self.evaluated = 0      # candidates this process evaluated
        self.cache_hits = 0

    def _check_study(self):
        attrs = self.study.user_attrs
        meta = {'objectives': list(self.objectives), 'grid': self.grid,
                'spaces': self.spaces}
        if not attrs.get('meta'):
            self.study.set_user_attr('meta', meta)
            return
        for k, v in meta.items():
            if attrs['meta'].get(k) != v:
                raise ValueError(
                    f'study {self.study_name!r} in {self.storage_url} was '
                    f'created with another {k} ({attrs["meta"].get(k)!r:.80}'
                    f'); use a new study_name or storage')

    # -- helpers ---------------------------------------------------------------------
    def violation(self, flops_ratio: float) -> float:
        """Positive when ``flops_ratio`` is outside the allowed range."""
        v = 0.0
        if self.max_flops_ratio is not None:
            v = max(v, flops_ratio - self.max_flops_ratio)
        if self.min_flops_ratio is not None:
            v = max(v, self.min_flops_ratio - flops_ratio)
        return v

    def snap(self, keep: float) -> float:
        """Nearest grid value."""
        return min(self.grid, key=lambda g: (abs(g - keep), -g))

    def completed(self) -> list:
        return self.study.get_trials(deepcopy=False,
                                     states=(TrialState.COMPLETE,))

    def enqueue(self, seeds: Iterable[Mapping[str, float]]) -> int:
        """Enqueue seed candidates (keep ratios, snapped to the grid) once:
        only into a study that has no trials yet."""
        if self.study.get_trials(deepcopy=False):
            return 0
        n, seen = 0, set()
        for seed in seeds:
            params = {s: self.snap(float(seed.get(s, 1.0)))
                      for s in self.spaces}
            key = tuple(params[s] for s in self.spaces)
            if key in seen:
                continue
            seen.add(key)
            self.study.enqueue_trial(params, user_attrs={'seed': True},
                                     skip_if_exists=True)
            n += 1
        return n

    # -- search ----------------------------------------------------------------------
    def optimize(self, evaluate: Callable[[dict[str, float]], dict],
                 flops_ratio: Callable[[dict[str, float]], float],
                 n_trials: int, progress: bool = True,
                 timeout: float | None = None) -> optuna.Study:
        """Run until the study holds ``n_trials`` completed trials.

        Args:
            evaluate: ``keep ratios -> {'top1', 'flops', 'params', ...}``.
            flops_ratio: Cheap exact FLOPs fraction of a candidate (used to
                skip infeasible candidates without evaluating them).
            n_trials: Completed trials wanted in the whole study.
            progress: Show a tqdm bar with the best feasible top-1.
            timeout: Stop this process after so many seconds.

        Returns:
            The study.
        """
        if n_trials < 0:
            raise ValueError(f'n_trials must be >= 0, got {n_trials}')
        done = len(self.completed())
        remaining = max(0, n_trials - done)
        if remaining == 0:
            return self.study
        cache = {self._key(t.params): t for t in self.completed()
                 if 'top1' in t.user_attrs}
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=n_trials, initial=done, desc='search',
                       dynamic_ncols=True)
        best = [self._best_top1()]  # -inf before the first evaluation

        def objective(trial):
            params = {s: trial.suggest_categorical(s, self.grid)
                      for s in self.spaces}
            key = self._key(params)
            fr = float(flops_ratio(params))
            v = self.violation(fr)
            # feasible when <= 0 (read by NSGA-II and TPE)
            trial.set_constraint('flops_ratio', v)
            trial.set_user_attr('constraint', [v])
            trial.set_user_attr('flops_ratio', fr)
            if v > 0:
                trial.set_user_attr('evaluated', False)
                # Never evaluated: the worst value per objective, so that
                # unconstrained samplers (random) also rank it last.
                return tuple(self._worst(o, fr) for o in self.objectives)
            if key in cache and cache[key].number != trial.number:
                res = {k: cache[key].user_attrs[k] for k in
                       ('top1', 'flops', 'params', 'latency_ms')
                       if k in cache[key].user_attrs}
                trial.set_user_attr('cached_from', cache[key].number)
                self.cache_hits += 1
            else:
                res = evaluate(params)
                self.evaluated += 1
            for k, val in res.items():
                if isinstance(val, (int, float)):
                    trial.set_user_attr(k, val)
            trial.set_user_attr('evaluated', True)
            missing = [o for o in self.objectives if o not in res]
            if missing:
                raise KeyError(f'evaluate() returned no {missing} '
                               f'(objectives {self.objectives})')
            return tuple(float(res[o]) for o in self.objectives)

        def after(study, trial):
            if trial.state == TrialState.COMPLETE and \
                    trial.user_attrs.get('evaluated'):
                cache.setdefault(self._key(trial.params), trial)
                best[0] = max(best[0], trial.user_attrs.get('top1', -1))
            if bar is not None:
                bar.n = len(self.completed())
                bar.set_postfix(best_top1=f'{best[0]:.2f}',
                                evaluated=self.evaluated)
                bar.refresh()

        t0 = time.perf_counter()
        try:
            self.study.optimize(
                objective, n_trials=remaining, timeout=timeout,
                callbacks=[after, MaxTrialsCallback(
                    n_trials, states=(TrialState.COMPLETE,))])
        finally:
            if bar is not None:
                bar.close()
        dt = time.perf_counter() - t0
        print_log(f'search: {len(self.completed())} completed trials in the '
                  f'study; this process evaluated {self.evaluated} '
                  f'candidates in {dt:.1f} s ({self.cache_hits} repeats '
                  f'answered from the study)', logger='current')
        return self.study

    def _key(self, params):
        return tuple(params[s] for s in self.spaces)

    @staticmethod
    def _worst(objective: str, fr: float) -> float:
        return -1.0 if objective == 'top1' else 1e30 * (1 + fr)

    def _best_top1(self) -> float:
        vals = [t.user_attrs['top1'] for t in self.completed()
                if t.user_attrs.get('evaluated') and 'top1' in t.user_attrs]
        return max(vals, default=float('-inf'))

    def records(self) -> list[dict[str, Any]]:
        """Evaluated, feasible completed trials as plain dicts."""
        res = []
        for t in self.completed():
            a = t.user_attrs
            if not a.get('evaluated') or a.get('constraint', [0])[0] > 0:
                continue
            rec = {'trial': t.number, 'ratios': dict(t.params),
                   'seed': bool(a.get('seed', False))}
            for k in ('top1', 'flops', 'params', 'flops_ratio',
                      'latency_ms'):
                if k in a:
                    rec[k] = a[k]
            res.append(rec)
        return res
