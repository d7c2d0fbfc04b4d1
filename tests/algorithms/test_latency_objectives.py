"""The latency table as objective / budget of layer fusion, the hybrid
search and AMC (issue 19 item 3): the chosen structures meet the budget on
the table estimate, the budget binds (a FLOPs budget of the same ratio
misses it), resume is exact, bad keys are named errors.

Small and fast: ResNet-20 on 1x28x28 inputs, a grid-2 table at batch 8,
timed by the deterministic clock of ``helpers.latency`` (a loaded CI timed
thin layers slower than wide ones), cached in one folder for the module.
"""
import json

import pytest
import torch

from helpers import BASELINE
from helpers.amc import amc_resnet20
from helpers.latency import lanes_clock
from helpers.models import randomise

X = torch.randn(1, 1, 28, 28)
TABLE = dict(batch=8, grid=2, repeats=2, num_threads=1, clock='cpu')


@pytest.fixture(scope='module')
def table_dir(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        lanes_clock(mp)
        yield str(tmp_path_factory.mktemp('latency_tables'))


def _cfg():
    from mmengine.config import Config

    from mmrazor_ext.registry import register_all_modules
    register_all_modules()
    return Config.fromfile(BASELINE)


def _fusion(target, **kwargs):
    from mmrazor_ext.algorithms import LayerFusion
    cfg = _cfg()
    torch.manual_seed(0)
    algo = LayerFusion(cfg.model, input_shape=(1, 1, 28, 28),
                       data_preprocessor=cfg.data_preprocessor,
                       metric='block_weight_norm', target=target, **kwargs)
    randomise(algo.architecture, eval_mode=False)
    return algo


def _lat(ratio, table_dir, **kw):
    return dict(mode='latency', ratio=ratio, cache_dir=table_dir, **TABLE,
                **kw)


# -- layer fusion -------------------------------------------------------------------
def test_fusion_latency_target_is_the_smallest_removal_within_budget(
        table_dir):
    from mmrazor_ext.algorithms import block_flops
    from mmrazor_ext.pruners import ChannelPruner
    from mmrazor_ext.search.latency_objective import (
        LatencyObjective,
        block_removal_subnet,
    )
    algo = _fusion(_lat(0.7, table_dir))
    blocks = algo.blocks()
    removed = algo.prune([])
    rep = algo.report['latency']
    saved = rep['block_saved_ms']
    # the block costs come from the table, not from MACs: the removable
    # ResNet blocks have (nearly) the same MACs, not the same latency
    macs = block_flops(_fusion(_lat(0.7, table_dir)).architecture, blocks, X)
    assert max(macs[n] for n in saved) / min(macs[n] for n in saved) < 1.01
    assert len({round(v, 9) for v in saved.values()}) > 1
    # within the budget, and binding: one block fewer would exceed it
    assert 0 < len(removed) < len(saved)
    assert rep['estimated_ratio'] <= 0.7 + 1e-9
    assert rep['estimated_ms'] <= rep['budget_ms'] + 1e-9
    assert rep['estimated_ms'] + saved[removed[-1]] > rep['budget_ms']
    # removals add up: the estimate is the dense one minus their savings
    # (the dense *estimate*: the measured dense_ms differs when the timed
    # layers alone add up to more than the whole model)
    assert rep['estimated_ms'] == pytest.approx(
        rep['dense_estimated_ms'] - sum(saved[n] for n in removed),
        rel=1e-6)
    # a FLOPs target of the same ratio removes a prefix of the same order;
    # it is shorter exactly when it misses the latency budget on the table
    flops = _fusion(dict(mode='flops', ratio=0.7))
    chosen = flops.prune([])
    assert chosen == removed[:len(chosen)] or \
        removed == chosen[:len(removed)]
    lat = LatencyObjective(ChannelPruner(_fusion(dict(mode='flops', ratio=0.7))
                                         .architecture, X),
                           _lat(0.7, table_dir))
    misses = lat.ratio(block_removal_subnet(lat.pruner, blocks, chosen)) > 0.7
    assert misses == (len(chosen) < len(removed))
    # the second pruner measured nothing (same model, same key)
    assert lat.model().table.from_cache
    # the removed blocks survive a state-dict round trip (resume)
    fresh = _fusion(_lat(0.7, table_dir))
    fresh.load_state_dict(algo.state_dict())
    assert fresh.removed == removed


def test_fusion_latency_ms_target_and_bad_keys(table_dir):
    dense_ms = _fusion(_lat(0.7, table_dir))
    dense_ms.prune([])
    ms = 0.8 * dense_ms.report['latency']['dense_ms']
    algo = _fusion(dict(mode='latency', ms=ms, cache_dir=table_dir, **TABLE))
    algo.prune([])
    assert algo.report['latency']['estimated_ms'] <= ms + 1e-9
    assert algo.report['latency']['budget_ratio'] == pytest.approx(0.8)
    for target, field in (
            (dict(mode='latency'), 'target.ratio'),
            (dict(mode='latency', ratio=1.5), 'target.ratio'),
            (dict(mode='latency', ratio=0.5, sampling='global'),
             'target.sampling'),
            (dict(mode='latency', ratio=0.5, bogus=1), 'bogus'),
            (dict(mode='latency', ratio=0.5, clock='cpu'),
             'target.num_threads'),
            (dict(mode='latency', ratio=0.5, batch=0), 'target.batch')):
        with pytest.raises(ValueError, match=field):
            _fusion(target)
    with pytest.raises(ValueError, match='merging'):
        _fusion(_lat(0.7, table_dir), merging=dict(linear_tol=1.0))


# -- hybrid search ------------------------------------------------------------------
def _hybrid(table_dir, **kwargs):
    from mmrazor_ext.algorithms import HybridSearch
    cfg = _cfg()
    torch.manual_seed(0)
    algo = HybridSearch(dict(cfg.model,
                             data_preprocessor=cfg.data_preprocessor),
                        input_shape=(1, 1, 28, 28),
                        grid=dict(low=0.5, high=1.0, step=0.25),
                        seeds=dict(global_prune_ratios=(),
                                   flops_ratios=(0.5,), uniform=True),
                        **kwargs)
    randomise(algo.architecture)
    return algo


def _search(algo, storage, n_trials, objectives=('top1', 'latency')):
    from mmrazor_ext.algorithms import run_hybrid_search
    from mmrazor_ext.search import AdaptiveBNEvaluator, OptunaSearcher
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 1, 28, 28, generator=gen),
                torch.randint(0, 10, (8,), generator=gen))]
    space = algo.build_space([])
    ev = AdaptiveBNEvaluator(algo.pruner, batches, batches, bn_batches=1)
    searcher = OptunaSearcher(space.names, space.grid, objectives=objectives,
                              sampler=dict(type='random', seed=0),
                              storage=storage, study_name='lat')
    run_hybrid_search(space, ev, searcher, n_trials, progress=False)
    return space, searcher


def test_hybrid_latency_constraint_objective_and_exact_resume(tmp_path,
                                                              monkeypatch):
    from optuna.trial import TrialState

    from mmrazor_ext.algorithms import write_search_results
    from mmrazor_ext.estimators.latency_table import LatencyTable

    # what is tested is the search's use of the table, not this machine's
    # timing (a loaded CI timed thin layers slower than wide ones): a
    # deterministic 'clock' (a cost per parameter) and a table of its own
    monkeypatch.setattr(LatencyTable, '_time', lambda self, module, inputs:
                        1e-12 + 1e-9 * sum(p.numel()
                                           for p in module.parameters()))
    table_dir = str(tmp_path / 'tables')
    storage = f'sqlite:///{tmp_path}/search.db'
    # the budget: between the uniform 0.5 candidate and the dense model
    probe = _hybrid(table_dir, constraint=_lat(0.99, table_dir))
    pspace = probe.build_space([])
    uniform = pspace.latency_ratio({n: 0.5 for n in pspace.names})
    full = pspace.latency_ratio({n: 1.0 for n in pspace.names})
    assert uniform < full
    budget = round(min(uniform + 0.3 * (full - uniform), 0.98), 4)
    algo = _hybrid(table_dir, constraint=_lat(budget, table_dir))
    space, searcher = _search(algo, storage, 6)
    trials = searcher.study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 6
    for t in trials:
        lat_v = t.user_attrs['constraint'][1]
        # the constraint is the table estimate minus the budget, no timing
        assert lat_v == pytest.approx(space.latency_ratio(t.params) - budget,
                                      abs=1e-12)
        assert t.user_attrs['evaluated'] == (max(
            t.user_attrs['constraint']) <= 0)
    records = searcher.records()
    assert records, ('the uniform 0.5 seed is feasible', budget, uniform)
    for r in records:
        assert r['latency_ratio'] <= budget
        assert r['latency'] == pytest.approx(
            1e3 * algo.pruner.estimate_latency(
                space.subnet_from_ratios(r['ratios']), **TABLE,
                cache_dir=table_dir))
    before = {t.number: (t.values, dict(t.user_attrs)) for t in trials}
    # resume: same study, same table -> old trials unchanged, new ones
    # scored on the same table
    algo2 = _hybrid(table_dir, constraint=_lat(budget, table_dir))
    space2, searcher2 = _search(algo2, storage, 9)
    after = {t.number: (t.values, dict(t.user_attrs))
             for t in searcher2.study.get_trials(
                 states=(TrialState.COMPLETE,))}
    assert len(after) == 9
    assert all(after[n] == v for n, v in before.items())
    for t in searcher2.study.get_trials(states=(TrialState.COMPLETE,)):
        assert t.user_attrs['constraint'][1] == pytest.approx(
            space2.latency_ratio(t.params) - budget, abs=1e-12)
    out = write_search_results(space2, searcher2, str(tmp_path / 'res'))
    best = out['best']['latency']
    assert best['latency_ratio'] <= budget
    assert (tmp_path / 'res' / best['subnet_file']).is_file()
    saved = json.loads((tmp_path / 'res' / 'search_results.json').read_text())
    assert saved['latency']['budget_ratio'] == budget
    assert 'latency' in saved['objectives']
    # another budget on the same study is refused, not silently mixed
    algo3 = _hybrid(table_dir, constraint=_lat(budget - 0.1, table_dir))
    with pytest.raises(ValueError, match='another latency'):
        _search(algo3, storage, 10)


def test_hybrid_latency_config_errors(table_dir):
    for kwargs, field in (
            (dict(constraint=dict(mode='flops', ratio=0.5)),
             'constraint.mode'),
            (dict(constraint=dict(mode='latency')), 'constraint.ratio'),
            (dict(constraint=dict(mode='latency', ratio=0.5, ms=3.0)),
             'constraint.ratio'),
            (dict(constraint=dict(mode='latency', ratio=0.5,
                                  clock='sundial')), 'constraint.clock'),
            (dict(latency_table=dict(ratio=0.5)), 'latency_table'),
            (dict(constraint=_lat(0.5, table_dir),
                  latency_table=dict(batch=8)), 'latency_table')):
        with pytest.raises(ValueError, match=field):
            _hybrid(table_dir, **kwargs)


# -- AMC ----------------------------------------------------------------------------
def _env(table_dir, **kw):
    from mmrazor_ext.pruners import ChannelPruner
    from mmrazor_ext.search import AMCEnv
    from mmrazor_ext.search.latency_objective import LatencyObjective
    pruner = ChannelPruner(amc_resnet20(), X)
    lat = kw.pop('latency', None)
    if lat is not None:
        kw['latency_budget'] = LatencyObjective(pruner, lat, progress=False)
    return AMCEnv(pruner, val_fn=lambda m: {'ind1': 50.0, 'ind2': 80.0},
                  pruning_method='l1-rank', **kw), pruner


def _episode(env, seed):
    import numpy as np
    rng = np.random.default_rng(seed)
    env.reset()
    done = False
    while not done:
        _, _, done, info = env.step(float(rng.uniform(0.05, 0.95)))
    return info


def test_amc_latency_budget_clamps_episodes(table_dir):
    from mmrazor_ext.search.latency_objective import LatencyObjective
    env, pruner = _env(table_dir, latency=_lat(0.6, table_dir))
    assert env.target_density == 0.6
    for seed in range(3):
        info = _episode(env, seed)
        # every random episode ends on the latency budget (as the MAC
        # budget: within channel granularity, 2 %)
        assert abs(info['latency_ratio'] / 0.6 - 1) <= 0.02
        est = pruner.estimate_latency(info['subnet'], **TABLE,
                                      cache_dir=table_dir)
        assert info['estimated_latency_ms'] == pytest.approx(est * 1e3)
    # the same ratio as a MAC budget misses the latency budget
    menv, mpruner = _env(table_dir, target_density=0.6)
    info = _episode(menv, 0)
    assert abs(info['normalized_macs'] / 60 - 1) <= 0.02
    lat = LatencyObjective(mpruner, _lat(0.6, table_dir), progress=False)
    assert lat.ratio(info['subnet']) > 0.6 * 1.02
    env.close()
    menv.close()


def test_amc_pruning_latency_target(tmp_path, table_dir):
    from mmrazor_ext.algorithms import AMCPruning
    cfg = _cfg()
    amc_cfg = dict(pruning_method='l1-rank', save_top_k=1,
                   ddpg_cfg=dict(warmup=2, num_training_episodes=1, bsize=4))

    def build(**kw):
        torch.manual_seed(0)
        algo = AMCPruning(cfg.model, input_shape=(1, 1, 28, 28),
                          data_preprocessor=cfg.data_preprocessor,
                          calib_batches=1, reward_batches=1,
                          feature_batches=1, **kw)
        randomise(algo.architecture)
        algo.work_dir = str(tmp_path)
        return algo
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 1, 28, 28, generator=gen),
                torch.randint(0, 10, (8,), generator=gen)) for _ in range(2)]
    algo = build(amc_cfg=amc_cfg, target=_lat(0.6, table_dir))
    algo.prune(batches)
    rep = algo.report['amc']
    assert rep['latency_budget']['budget_ratio'] == 0.6
    assert abs(rep['best']['latency_ratio'] / 0.6 - 1) <= 0.02
    est = algo.pruner.estimate_latency(algo.pruner.subnet, **TABLE,
                                       cache_dir=table_dir)
    assert est / algo.pruner.latency_model(
        **TABLE, cache_dir=table_dir).dense_s <= 0.6 * 1.02
    for kw, field in (
            (dict(amc_cfg=dict(amc_cfg, target_density=0.5),
                  target=_lat(0.6, table_dir)), 'amc_cfg.target_density'),
            (dict(amc_cfg=amc_cfg, target=_lat(0.6, table_dir,
                                               sampling='global')),
             'target.sampling'),
            (dict(amc_cfg=amc_cfg, target=dict(mode='latency', ms=-1)),
             'target.ms')):
        with pytest.raises(ValueError, match=field):
            build(**kw)
