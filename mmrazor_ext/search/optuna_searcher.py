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
  after ``grace_period`` s and re-queued once
  (``RetryHeartbeatStaleTrialCallback``). A trial killed before its first
  heartbeat (Optuna never fails those) is failed and re-queued by the next
  run once it is ``heartbeat_interval`` s old (:func:`reap_orphans`);
* several processes (``tools/search.py --workers N``, torchrun ranks, or
  other hosts with the same storage URL) share one study and stop at
  exactly ``n_trials`` completed trials: a trial that would exceed the
  budget, counting the lower-numbered trials still running, is pruned
  without evaluation and its worker stops.

Objectives: ``top1`` (maximised), ``flops`` / ``params`` / ``latency_ms``
(measured) / ``latency`` (estimated from the latency table, ms; minimised).
With one objective, ``max_flops_ratio`` makes it a constrained search; with
two or more, NSGA-II finds the Pareto front. Candidates that violate the
FLOPs constraint, or an extra constraint such as the latency table's
budget (``optimize(constraints=...)``), are not evaluated (both are known
without data) and are marked infeasible for the sampler. What those extra
constraints were computed from is kept in the study (:meth:`bind_meta`), so
a resumed search scores new trials exactly as the earlier ones.
"""
from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import optuna
from mmengine.logging import print_log
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

__all__ = ['OptunaSearcher', 'ratio_grid', 'pareto_front', 'reap_orphans',
           'check_n_trials']

_DIRECTIONS = {'top1': 'maximize', 'flops': 'minimize',
               'params': 'minimize', 'latency_ms': 'minimize',
               'latency': 'minimize'}
#: per-trial values kept in the study and reused for repeated candidates
_RESULT_KEYS = ('top1', 'flops', 'params', 'latency_ms', 'latency',
                'latency_ratio')
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


def check_n_trials(n_trials, name: str = 'n_trials') -> int:
    """``n_trials`` as an int >= 1, or a ValueError naming ``name``."""
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or \
            n_trials < 1:
        raise ValueError(f'{name} must be an integer >= 1, got {n_trials!r} '
                         f'({type(n_trials).__name__})')
    return n_trials


def _uses_heartbeat(storage) -> bool:
    return isinstance(storage, RDBStorage) and \
        storage.get_heartbeat_interval() is not None


def heartbeat_ages(study: optuna.Study, storage,
                   trials: Sequence) -> dict[int, float | None]:
    """Seconds since each trial's last heartbeat (None: it never wrote one),
    by trial number, in the database's clock."""
    import sqlalchemy
    if not trials:
        return {}
    study_id = storage.get_study_id_from_name(study.study_name)
    ids = {storage.get_trial_id_from_study_id_trial_number(study_id, t.number):
           t.number for t in trials}
    table = sqlalchemy.table('trial_heartbeats', sqlalchemy.column('trial_id'),
                             sqlalchemy.column('heartbeat', sqlalchemy.DateTime))
    with storage.engine.connect() as conn:
        now = conn.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar()
        rows = conn.execute(sqlalchemy.select(table.c.trial_id,
                                              table.c.heartbeat).where(
            table.c.trial_id.in_(list(ids)))).all()
    now = now.replace(tzinfo=None)
    ages: dict[int, float | None] = {n: None for n in ids.values()}
    for tid, beat in rows:
        ages[ids[tid]] = (now - beat.replace(tzinfo=None)).total_seconds()
    return ages


def _age(trial) -> float:
    start = trial.datetime_start
    return 0.0 if start is None else (datetime.now() - start).total_seconds()


def reap_orphans(study: optuna.Study, storage, min_age: float) -> list[int]:
    """Fail (and re-queue once) RUNNING trials that never wrote a heartbeat.

    Optuna fails a trial whose heartbeat went stale, but a process killed
    between creating a trial and its first heartbeat leaves a RUNNING trial
    without any, which Optuna never touches. A live trial writes its first
    heartbeat right after it starts, so one older than ``min_age`` seconds
    without a heartbeat is dead.

    Args:
        study: The study.
        storage: Its ``RDBStorage`` (other storages: nothing is done).
        min_age: Seconds since the trial started.

    Returns:
        Numbers of the trials failed.
    """
    if not _uses_heartbeat(storage):
        return []
    old = [t for t in study.get_trials(deepcopy=False,
                                       states=(TrialState.RUNNING,))
           if _age(t) > min_age]
    ages = heartbeat_ages(study, storage, old)
    retry = storage.get_heartbeat_stale_trial_callback()
    study_id = storage.get_study_id_from_name(study.study_name) if old else 0
    reaped = []
    for trial in old:
        if ages[trial.number] is not None:
            continue
        tid = storage.get_trial_id_from_study_id_trial_number(study_id,
                                                              trial.number)
        try:
            if not storage.set_trial_state_values(tid, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another process got there first
        reaped.append(trial.number)
        if retry is not None:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore',
                                      optuna.exceptions.ExperimentalWarning)
                retry(study, storage.get_trial(tid))
    if reaped:
        print_log(f'search: trials {reaped} were left RUNNING without a '
                  'heartbeat by a killed process; failed and re-queued',
                  logger='current', level=30)
    return reaped


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
        heartbeat_interval: Seconds between a running trial's heartbeats;
            a RUNNING trial this old that never wrote one is failed and
            re-queued once (:func:`reap_orphans`).
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
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        for attempt in range(5):
            try:
                self._rdb = _storage(storage, heartbeat_interval,
                                         grace_period)
                self.study = optuna.create_study(
                    storage=self._rdb,
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

    def bind_meta(self, key: str, value: Any) -> None:
        """Keep ``value`` (JSON-friendly, e.g. the latency budget and the
        table's fingerprint) in the study under ``key``.

        A new study takes it; one with trials or with another value (e.g.
        a worker that measured its own table) must match (None: off).

        Raises:
            ValueError: The study was searched with another value.
        """
        attr = f'meta_{key}'
        stored = self.study.user_attrs.get(attr)
        if stored == value:
            return
        if stored is not None or self.study.get_trials(deepcopy=False):
            raise ValueError(
                f'study {self.study_name!r} in {self.storage_url} was '
                f'searched with another {key} ({stored!r:.200}, now '
                f'{value!r:.200}); use the same settings (and the same '
                'latency table cache) or a new study_name')
        self.study.set_user_attr(attr, value)

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
                 timeout: float | None = None,
                 constraints: Mapping[str, Callable[[dict[str, float]],
                                                    float]] | None = None
                 ) -> optuna.Study:
        """Run until the study holds ``n_trials`` completed trials.

        Args:
            evaluate: ``keep ratios -> {'top1', 'flops', 'params', ...}``.
            flops_ratio: Cheap exact FLOPs fraction of a candidate (used to
                skip infeasible candidates without evaluating them).
            n_trials: Completed trials wanted in the whole study.
            progress: Show a tqdm bar with the best feasible top-1.
            timeout: Stop this process after so many seconds.
            constraints: ``{name: fn}``, ``fn(keep ratios)`` > 0 when the
                candidate is infeasible (e.g. estimated latency ratio minus
                its budget); checked before evaluating, like the FLOPs.

        Returns:
            The study.
        """
        constraints = dict(constraints or {})
        check_n_trials(n_trials)
        self.reap_orphans()
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
            if self._over_budget(trial, n_trials):
                # other workers' running trials complete the study
                trial.set_user_attr('skipped', 'n_trials reached')
                trial.study.stop()
                raise optuna.TrialPruned()
            params = {s: trial.suggest_categorical(s, self.grid)
                      for s in self.spaces}
            key = self._key(params)
            fr = float(flops_ratio(params))
            vals = [self.violation(fr)]
            # feasible when <= 0 (read by NSGA-II and TPE)
            trial.set_constraint('flops_ratio', vals[0])
            for name, fn in constraints.items():
                vals.append(float(fn(params)))
                trial.set_constraint(name, vals[-1])
            trial.set_user_attr('constraint', vals)
            trial.set_user_attr('flops_ratio', fr)
            if max(vals) > 0:
                trial.set_user_attr('evaluated', False)
                # Never evaluated: the worst value per objective, so that
                # unconstrained samplers (random) also rank it last.
                return tuple(self._worst(o, fr) for o in self.objectives)
            if key in cache and cache[key].number != trial.number:
                res = {k: cache[key].user_attrs[k] for k in _RESULT_KEYS
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
            self.reap_orphans()
            if self._budget_used() >= n_trials:
                study.stop()  # the running trials complete the study
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
            while remaining > 0:
                left = None if timeout is None else \
                    timeout - (time.perf_counter() - t0)
                if left is not None and left <= 0:
                    break
                self.study.optimize(
                    objective, n_trials=remaining, timeout=left,
                    callbacks=[after, MaxTrialsCallback(
                        n_trials, states=(TrialState.COMPLETE,))])
                remaining = self._await_running(n_trials)
        finally:
            if bar is not None:
                bar.close()
        dt = time.perf_counter() - t0
        print_log(f'search: {len(self.completed())} completed trials in the '
                  f'study; this process evaluated {self.evaluated} '
                  f'candidates in {dt:.1f} s ({self.cache_hits} repeats '
                  f'answered from the study)', logger='current')
        return self.study

    def _await_running(self, n_trials: int, poll: float = 2.0) -> int:
        """Trials still to run after this process stopped for the budget.

        The process stops when completed plus live RUNNING trials reach
        ``n_trials``; a RUNNING trial may still belong to a killed process
        whose heartbeat is not yet stale. Wait until every RUNNING trial
        has completed, or has been failed (and re-queued) by the heartbeat,
        so that a resumed search never ends short of ``n_trials``.
        """
        # A killed process's trial turns stale within grace_period; one
        # still RUNNING after that belongs to a live worker, which
        # completes the study.
        deadline = time.monotonic() + self.grace_period + poll
        while True:
            done = len(self.completed())
            if done >= n_trials:
                return 0
            running = self.study.get_trials(deepcopy=False,
                                            states=(TrialState.RUNNING,))
            if not running or not _uses_heartbeat(self._rdb):
                return n_trials - done
            if time.monotonic() > deadline:
                return 0
            time.sleep(poll)
            optuna.storages.fail_stale_trials(self.study)
            self.reap_orphans()

    def _key(self, params):
        return tuple(params[s] for s in self.spaces)

    def reap_orphans(self) -> list[int]:
        """Fail and re-queue trials a killed process left RUNNING before
        their first heartbeat (see :func:`reap_orphans`)."""
        return reap_orphans(self.study, self._rdb,
                            self.heartbeat_interval)

    def _live_running(self, trials: Sequence) -> list:
        """The RUNNING trials among ``trials`` that are alive: a heartbeat
        within two intervals, or started within one and none yet. Without a
        heartbeat storage (one process) they all are."""
        if not _uses_heartbeat(self._rdb) or not trials:
            return list(trials)
        hb = self.heartbeat_interval
        ages = heartbeat_ages(self.study, self._rdb, trials)
        return [t for t in trials if (ages[t.number] is None and _age(t) <= hb)
                or (ages[t.number] is not None and ages[t.number] <= 2 * hb)]

    def _budget_used(self, before: int | None = None) -> int:
        """Completed trials plus live running ones (numbered below
        ``before`` when given): what the study will hold when they end."""
        trials = self.study.get_trials(
            deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
        done = sum(t.state == TrialState.COMPLETE for t in trials)
        running = [t for t in trials if t.state == TrialState.RUNNING
                   and (before is None or t.number < before)]
        return done + len(self._live_running(running))

    def _over_budget(self, trial, n_trials: int) -> bool:
        """Whether ``trial`` would complete the study beyond ``n_trials``:
        completed trials plus the live lower-numbered ones still running
        (they finish first) already reach it. Deterministic across workers:
        of two trials racing for the last slot, the higher number yields."""
        return self._budget_used(before=trial.number) >= n_trials

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
            if not a.get('evaluated') or max(a.get('constraint', [0])) > 0:
                continue
            rec = {'trial': t.number, 'ratios': dict(t.params),
                   'seed': bool(a.get('seed', False))}
            for k in ('flops_ratio', *_RESULT_KEYS):
                if k in a:
                    rec[k] = a[k]
            res.append(rec)
        return res
