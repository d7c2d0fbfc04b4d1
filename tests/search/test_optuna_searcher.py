"""The Optuna searcher: grid and Pareto front, constraint and cache,
errors, resuming a study, re-queued killed trials and stopping at
exactly n_trials with several workers (search/optuna_searcher.py)."""
import optuna
import pytest
from optuna.trial import TrialState

from mmrazor_ext.search import OptunaSearcher, pareto_front, ratio_grid


def test_ratio_grid_and_pareto():
    assert ratio_grid(0.3, 1.0, 0.1) == [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9,
                                         1.0]
    pts = [{'top1': 90, 'flops': 10}, {'top1': 80, 'flops': 5},
           {'top1': 70, 'flops': 8}, {'top1': 90, 'flops': 12}]
    assert sorted(pareto_front(pts, ['top1', 'flops'])) == [0, 1]
    with pytest.raises(ValueError, match='grid'):
        ratio_grid(0.0, 1.0, 0.1)


def _toy(searcher_kwargs, n_trials, evaluate=None):
    spaces = ['a', 'b', 'c']
    s = OptunaSearcher(spaces, ratio_grid(0.2, 1.0, 0.2), **searcher_kwargs)
    calls = []

    def fr(p):
        return sum(p.values()) / 3

    def ev(p):
        calls.append(dict(p))
        return {'top1': 100 - 50 * abs(p['a'] - 0.6) - 10 * p['c'],
                'flops': int(1000 * fr(p)), 'params': 1}
    s.optimize(evaluate or ev, fr, n_trials, progress=False)
    return s, calls


def test_searcher_constraint_and_cache():
    s, calls = _toy(dict(objectives=('top1',), max_flops_ratio=0.5,
                         sampler=dict(type='tpe', seed=0)), 40)
    done = s.completed()
    assert len(done) == 40
    # infeasible candidates were never evaluated
    assert all(sum(c.values()) / 3 <= 0.5 + 1e-9 for c in calls)
    # repeats were answered from the study, not re-evaluated
    assert len(calls) == len({tuple(c.values()) for c in calls})
    assert s.evaluated == len(calls)
    best = max(s.records(), key=lambda r: r['top1'])
    assert best['ratios']['a'] == pytest.approx(0.6)


def test_searcher_errors(tmp_path):
    with pytest.raises(ValueError, match='objectives'):
        OptunaSearcher(['a'], [0.5, 1.0], objectives=('acc',))
    with pytest.raises(ValueError, match='sampler.type'):
        OptunaSearcher(['a'], [0.5, 1.0], sampler=dict(type='geatpy'))
    with pytest.raises(ValueError, match='max_flops_ratio'):
        OptunaSearcher(['a'], [0.5, 1.0], max_flops_ratio=1.5)
    url = f'sqlite:///{tmp_path}/s.db'
    OptunaSearcher(['a'], [0.5, 1.0], storage=url)
    with pytest.raises(ValueError, match='grid'):
        OptunaSearcher(['a'], [0.4, 1.0], storage=url)


def test_searcher_resumes_study(tmp_path):
    url = f'sqlite:///{tmp_path}/s.db'
    kw = dict(storage=url, sampler=dict(type='nsga2', population_size=4))

    class Stop(Exception):
        pass

    calls = []

    def dying(p):
        if len(calls) == 5:
            raise Stop
        calls.append(p)
        return {'top1': sum(p.values()), 'flops': 1, 'params': 1}
    with pytest.raises(Stop):
        _toy(kw, 12, dying)
    s1 = optuna.load_study(study_name='search', storage=url)
    first = {t.number: t.values for t in s1.trials
             if t.state == TrialState.COMPLETE}
    assert len(first) == 5
    s, calls2 = _toy(kw, 12)
    done = s.completed()
    assert len(done) == 12
    assert {t.number: t.values for t in done if t.number in first} == first
    assert len({t.number for t in s.study.trials}) == len(s.study.trials)
    assert len(calls2) <= 7  # only the missing trials were evaluated


# -- search: killed trials are re-queued, workers stop at exactly n_trials ----
def _searcher(url, heartbeat_interval=1):
    from mmrazor_ext.search.optuna_searcher import OptunaSearcher, ratio_grid
    return OptunaSearcher(['a', 'b'], ratio_grid(0.2, 1.0, 0.2), storage=url,
                          sampler=dict(type='random', seed=0),
                          heartbeat_interval=heartbeat_interval)


def _objective(p):
    return {'top1': sum(p.values()), 'flops': 1, 'params': 1}


def test_trial_killed_before_heartbeat_is_requeued(tmp_path):
    import time

    from optuna.trial import TrialState
    url = f'sqlite:///{tmp_path}/search.db'
    s = _searcher(url)
    s.enqueue([{'a': 0.4, 'b': 0.4}, {'a': 0.6, 'b': 0.6},
               {'a': 0.8, 'b': 0.8}])
    s.optimize(_objective, lambda p: 0.5, 2, progress=False)
    orphan = s.study.ask()  # a process killed right after creating it
    time.sleep(1.2)         # older than heartbeat_interval, no heartbeat
    s = _searcher(url)
    s.optimize(_objective, lambda p: 0.5, 4, progress=False)
    trials = s.study.get_trials()
    assert trials[orphan.number].state == TrialState.FAIL
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    done = s.completed()
    assert len(done) == 4
    retried = [t for t in done if t.system_attrs.get('failed_trial')
               == orphan.number]
    assert retried and retried[0].params == {'a': 0.8, 'b': 0.8}


def test_workers_stop_at_exactly_n_trials(tmp_path):
    """Trials running in other workers count: the one that would exceed
    n_trials is pruned without evaluation and its worker stops."""
    from optuna.trial import TrialState
    url = f'sqlite:///{tmp_path}/search.db'
    s = _searcher(url, heartbeat_interval=600)
    s.optimize(_objective, lambda p: 0.5, 2, progress=False)
    others = [s.study.ask(), s.study.ask()]  # still running elsewhere
    calls = []
    s.optimize(lambda p: calls.append(p) or _objective(p), lambda p: 0.5, 4,
               progress=False)
    assert calls == []  # 2 done + 2 running = 4: nothing more to evaluate
    pruned = [t for t in s.study.get_trials() if t.state == TrialState.PRUNED]
    assert len(pruned) == 1
    for t in others:
        s.study.tell(t, [1.0, 1.0])
    assert len(s.completed()) == 4
    with pytest.raises(ValueError, match=r"n_trials must be an integer >= 1, "
                                         r"got 'abc'"):
        s.optimize(_objective, lambda p: 0.5, 'abc', progress=False)
