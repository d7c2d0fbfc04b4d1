"""Latency as a pruning target: validation, table reuse, and a measured
landing on CIFAR ResNet-20."""
import os

import pytest
import torch

from helpers import ROOT
from helpers.latency import lanes_clock
from mmrazor_ext.models import CifarResNet
from mmrazor_ext.pruners import ChannelPruner
from mmrazor_ext.pruners.latency_target import (
    check_latency_target,
    width_candidates,
)

BASELINE = os.path.join(ROOT,
                        'configs/baselines/resnet20_1xb128_fashionmnist.py')
BATCH = 16
# one thread and process CPU time: timing stays meaningful when other jobs
# share the cores
OPTS = dict(batch=BATCH, grid=4, repeats=2, progress=False, num_threads=1,
            clock='cpu', calibrate=False)


@pytest.mark.parametrize('target, field', [
    (dict(ratio=1.5), 'target.ratio'),
    (dict(ratio=0), 'target.ratio'),
    (dict(ms=-2.0), 'target.ms'),
    (dict(ms='fast'), 'target.ms'),
    (dict(ratio=0.5, ms=3.0), 'target.ratio'),
    (dict(), 'target.ms'),
    (dict(ratio=0.5, sampling='sensitivity'), 'target.sampling'),
    (dict(ratio=0.5, batch=0), 'target.batch'),
    (dict(ratio=0.5, grid=2.5), 'target.grid'),
    (dict(ratio=0.5, tol=2), 'target.tol'),
    (dict(ratio=0.5, cache_dir=3), 'target.cache_dir'),
    (dict(ratio=0.5, speed=1), 'unknown keys'),
    (dict(ratio=0.5, clock='gpu'), 'target.clock'),
    (dict(ratio=0.5, clock='cpu', num_threads=2), 'target.clock'),
    (dict(ratio=0.5, calibrate='yes'), 'target.calibrate'),
    (dict(ratio=0.5, calib_iters=0), 'target.calib_iters'),
    (dict(ratio=0.5, calib_repeats=1.5), 'target.calib_repeats'),
    (dict(ratio=0.5, calib_tol=1.5), 'target.calib_tol'),
    (dict(ratio=0.5, min_keep=0), 'target.min_keep'),
])
def test_bad_latency_targets_named(target, field):
    from mmrazor_ext.algorithms import OneShotPruning
    with pytest.raises(ValueError, match=field):
        check_latency_target(dict(mode='latency', **target))
    with pytest.raises(ValueError, match=field):
        OneShotPruning.check_target(dict(mode='latency', **target))


def test_latency_target_defaults():
    from mmrazor_ext.algorithms import IterativePruning, OneShotPruning
    t = OneShotPruning.check_target(dict(mode='latency', ratio=0.5))
    assert t == dict(mode='latency', ratio=0.5, sampling='efficient')
    t = IterativePruning.check_target(dict(mode='latency', ms=12.0,
                                           batch=8, sampling='uniform'))
    assert t['ms'] == 12.0 and t['batch'] == 8
    assert 'latency' in OneShotPruning.TARGET_MODES


def test_width_candidates():
    assert width_candidates(64, 8, 8) == [8, 16, 24, 32, 40, 48, 56, 64]
    assert width_candidates(16, 4, 8) == [4, 8, 12, 16]
    assert width_candidates(10, 1, 4) == [2, 5, 8, 10]
    # as the sampler rounds: a 12-channel space with divisor 8 keeps 8 or
    # 12; a space narrower than the divisor is not rounded
    assert width_candidates(12, 8, 4) == [8, 12]
    assert width_candidates(6, 8, 3) == [2, 4, 6]


def _measured_ratio(dense, small, rounds=20):
    """Interleaved timing (background load hits both alike); fastest run
    of each."""
    from mmrazor_ext.estimators import measure_latency
    x = torch.randn(BATCH, 3, 32, 32)
    t0, t1 = [], []
    for m in (dense, small):
        measure_latency(m, x, warmup=2, repeats=1, num_threads=1,
                        clock='cpu')
    for _ in range(rounds):
        t0.append(measure_latency(dense, x, warmup=0, repeats=1,
                                  num_threads=1, clock='cpu'))
        t1.append(measure_latency(small, x, warmup=0, repeats=1,
                                  num_threads=1, clock='cpu'))
    return min(t1) / min(t0)


def test_latency_target_lands_on_resnet20(tmp_path):
    torch.manual_seed(0)
    model = CifarResNet(20).eval()
    pruner = ChannelPruner(model, torch.randn(1, 3, 32, 32))
    scores = pruner.get_metric_local('l1')
    opts = dict(OPTS, cache_dir=str(tmp_path))
    # the default closed loop (export, time, correct) is what makes the
    # target land when the table was timed on a loaded machine
    sub = pruner.sample_subnet_for_latency(0.5, scores, mode='uniform',
                                           **dict(opts, calibrate=True,
                                                  calib_iters=3))
    rep = pruner.last_latency_report
    assert rep['calibrated'] and rep['calibration'], rep
    assert rep['macs_ratio'] < 0.9 and not rep['table_from_cache']
    assert pruner.estimate_latency(sub, **opts) == pytest.approx(
        rep['estimated_ms'] / 1e3)
    # estimates fall with the kept width
    wider = pruner.sample_subnet_uniform(0.2, scores)
    assert pruner.estimate_latency(wider, **opts) > \
        pruner.estimate_latency(sub, **opts)
    pruner.set_subnet(sub)
    small = pruner.export()
    pruner.clear_subnet()
    measured = _measured_ratio(model, small)
    assert abs(measured - 0.5) <= 0.25, (measured, rep)
    # a new pruner on the same model reuses the table (nothing timed)
    again = ChannelPruner(model, torch.randn(1, 3, 32, 32))
    lm = again.latency_model(**opts)
    assert lm.table.from_cache and lm.table.num_measurements == 0
    # an ms target is the same target expressed in milliseconds
    ms = 0.5 * lm.dense_s * 1e3
    sub_ms = again.sample_subnet_for_latency(ms=ms, scores=scores,
                                             mode='uniform', **opts)
    assert again.last_latency_report['target_ratio'] == pytest.approx(0.5)
    plain = again.sample_subnet_for_latency(0.5, scores, mode='uniform',
                                            **opts)
    assert again.last_latency_report['estimated_ratio'] == pytest.approx(
        0.5, abs=0.08)
    assert {k: int(v.sum()) for k, v in sub_ms.items()} == \
        {k: int(v.sum()) for k, v in plain.items()}


def test_oneshot_algorithm_latency_mode(tmp_path, monkeypatch):
    lanes_clock(monkeypatch)  # the algorithm's use of the table, not timing
    from mmengine.config import Config

    from mmrazor_ext.algorithms import IterativePruning, OneShotPruning
    from mmrazor_ext.registry import register_all_modules
    register_all_modules()
    cfg = Config.fromfile(BASELINE)
    torch.manual_seed(0)
    target = dict(mode='latency', ratio=0.6, sampling='uniform',
                  cache_dir=str(tmp_path), batch=4, grid=2, repeats=1,
                  num_threads=1, clock='cpu', calibrate=False)
    algo = OneShotPruning(cfg.model, input_shape=(1, 1, 28, 28),
                          data_preprocessor=cfg.data_preprocessor,
                          bn_recalib_batches=0, target=target)
    algo.prune([], step=1)
    rep = algo.report['latency_step1']
    assert rep['estimated_ratio'] == pytest.approx(0.6, abs=0.08), rep
    assert rep['batch'] == 4
    assert algo.pruner.estimate_flops() < algo.pruner.original_flops
    # iterative, in ms: step 1 of 2 keeps more latency than the final
    # target; the same structure reuses the cached table
    dense_ms = algo.pruner.latency_model(
        **algo.latency_options()).dense_s * 1e3
    by_ms = {k: v for k, v in target.items() if k != 'ratio'}
    by_ms['ms'] = 0.6 * dense_ms
    it = IterativePruning(cfg.model, input_shape=(1, 1, 28, 28),
                          data_preprocessor=cfg.data_preprocessor,
                          bn_recalib_batches=0, num_steps=2, target=by_ms)
    assert it.target_at(1)['ratio'] == pytest.approx(0.8)
    assert it.target_at(2)['ratio'] == pytest.approx(0.6)
    assert 'ms' not in it.target_at(2)
    assert it.pruner.latency_model(**it.latency_options()).table.from_cache


@pytest.fixture(scope='module')
def resnet20(tmp_path_factory):
    """CIFAR ResNet-20, its pruner, L1 scores and a table cache shared by
    the tests below (the table is built once, on the deterministic machine
    of :func:`helpers.latency.lanes_clock`)."""
    torch.manual_seed(0)
    model = CifarResNet(20).eval()
    pruner = ChannelPruner(model, torch.randn(1, 3, 32, 32))
    with pytest.MonkeyPatch.context() as mp:
        lanes_clock(mp)
        yield (model, pruner, pruner.get_metric_local('l1'),
               str(tmp_path_factory.mktemp('latency')))


def _export(pruner, subnet):
    pruner.set_subnet(subnet)
    small = pruner.export(check=False)
    pruner.clear_subnet()
    return small


def _ratios(dense, models, rounds=10):
    """Latency of each of ``models`` / ``dense``, timed in turn (fastest
    run of each)."""
    from mmrazor_ext.estimators import measure_latency
    x = torch.randn(BATCH, 3, 32, 32)
    every = [dense, *models]
    times = [[] for _ in every]
    for m in every:
        measure_latency(m, x, warmup=2, repeats=1, num_threads=1,
                        clock='cpu')
    for _ in range(rounds):
        for t, m in zip(times, every):
            t.append(measure_latency(m, x, warmup=0, repeats=1,
                                     num_threads=1, clock='cpu'))
    return [min(t) / min(times[0]) for t in times[1:]]


def test_calibration_lands_closer_and_is_cached(resnet20, monkeypatch):
    """The closed loop on a deterministic machine: 'measuring' returns a
    fixed function of the two models' MACs, which the per-layer table does
    not predict. Real timing on a loaded 2-core CI is too noisy
    for a test of the loop's logic (the real figures are in the benchmark:
    tools/benchmark/pruning_speed.py --latency-target)."""
    import mmrazor_ext.pruners.latency_sampling as ls
    from mmrazor_ext.estimators import get_model_complexity
    model, pruner, scores, cache = resnet20
    cache = os.path.join(cache, 'calibration_test')
    calls = []

    def fake_measure(dense, small, inputs, repeats=5, num_threads=None,
                     clock='wall'):
        # a machine where thin layers cost far more than their MACs:
        # latency ratio = MACs ratio ** 0.4, whatever the table says
        calls.append(repeats)
        x = inputs[0][:1]
        d, m = (float(get_model_complexity(mod, x)['macs'])
                for mod in (dense, small))
        return 1.0, (m / d) ** 0.4

    monkeypatch.setattr(ls, 'measure_ratio', fake_measure)
    # a tiny tolerance: the loop always corrects (where the table lands
    # first depends on the timing it was built from)
    opts = dict(OPTS, cache_dir=cache, calibrate=True, calib_iters=4,
                calib_repeats=5, calib_tol=0.001)

    def fake_ratio(sub):
        return fake_measure(model, _export(pruner, sub),
                            (torch.randn(1, 3, 32, 32),))[1]

    plain = pruner.sample_subnet_for_latency(
        0.5, scores, mode='uniform', **dict(opts, calibrate=False))
    assert not pruner.last_latency_report['calibrated'] and not calls
    sub = pruner.sample_subnet_for_latency(0.5, scores, mode='uniform',
                                           **opts)
    rep = pruner.last_latency_report
    steps = rep['calibration']
    assert rep['calibrated'] and 2 <= len(steps) <= 4, steps
    assert len(calls) == len(steps) and set(calls) == {5}
    assert steps[0]['table_target'] == 0.5 and not steps[0]['from_cache']
    # it corrects towards the target: a model measured too fast gets a
    # higher table target, a too slow one a lower
    first = steps[0]['measured_ratio']
    assert (steps[1]['table_target'] - 0.5) * (0.5 - first) > 0, steps
    assert rep['measured_ratio'] == min(
        (s['measured_ratio'] for s in steps), key=lambda m: abs(m - 0.5))
    m_plain, m_cal = fake_ratio(plain), fake_ratio(sub)
    assert rep['measured_ratio'] == pytest.approx(m_cal)
    # never worse than the table alone; how close depends on the width
    # grid (ResNet-20 candidates jump by ~0.1 in this ratio)
    assert abs(m_cal - 0.5) <= abs(m_plain - 0.5), (m_cal, m_plain, steps)
    assert abs(m_cal - 0.5) < 0.15, (m_cal, steps)
    # a second run measures nothing and lands on the same widths
    assert len([f for f in os.listdir(cache)
                if f.endswith('_calibration.json')]) == 1
    calls.clear()
    sub2 = pruner.sample_subnet_for_latency(0.5, scores, mode='uniform',
                                            **opts)
    steps2 = pruner.last_latency_report['calibration']
    assert not calls
    assert all(s['from_cache'] for s in steps2) and len(steps2) == len(steps)
    assert {k: int(v.sum()) for k, v in sub2.items()} == \
        {k: int(v.sum()) for k, v in sub.items()}


def test_efficient_sampling_keeps_more_macs_per_latency(resnet20):
    _, pruner, scores, cache = resnet20
    opts = dict(OPTS, cache_dir=cache)
    pruner.sample_subnet_for_latency(0.6, scores, mode='uniform', **opts)
    uni = pruner.last_latency_report
    subs = {}
    for keep in (0.7, 0.6):
        subs[keep] = pruner.sample_subnet_for_latency(
            keep, scores, mode='efficient', min_keep=0.25, **opts)
    eff = pruner.last_latency_report
    assert eff['estimated_ratio'] <= 0.6 + 1e-9 and eff['mode'] == 'efficient'
    # the objective: more MACs kept (accuracy proxy) per estimated latency
    assert eff['macs_ratio'] / eff['estimated_ratio'] >= \
        uni['macs_ratio'] / uni['estimated_ratio'], (eff, uni)
    for name, space in pruner.channel_spaces.items():
        n = space.num_channels
        # the floor holds, and a lower target only removes more channels
        assert int(subs[0.6][name].sum()) >= -(-n // 4)
        assert not (subs[0.6][name] & ~subs[0.7][name]).any(), name


def test_efficient_keeps_the_candidate_with_most_macs(resnet20, monkeypatch):
    """'efficient' returns whichever of its candidates (the greedy, the
    greedy with half of every space kept, uniform bisection) keeps the most
    MACs within the target: a greedy that ends far from its objective (as
    on ResNet-56, 0.22 of the MACs where uniform keeps 0.31) is not used."""
    import math

    import mmrazor_ext.pruners.latency_target as lt
    _, pruner, scores, cache = resnet20
    opts = dict(OPTS, cache_dir=cache)
    sub = pruner.sample_subnet_for_latency(0.6, scores, mode='efficient',
                                           **opts)
    rep = pruner.last_latency_report
    assert rep['candidate'] in ('greedy', 'greedy_half', 'uniform')
    assert rep['estimated_ratio'] <= 0.6 * (1 + 0.01)
    lm = pruner.latency_model(**{k: v for k, v in opts.items()
                                 if k != 'calibrate'})
    greedy = lm.efficient_subnet(pruner.sampler, 0.6, scores, 0.25)
    assert pruner.estimate_flops(sub) >= pruner.estimate_flops(greedy)

    # a greedy that cuts every space to its floor: within the target, but
    # it keeps the fewest MACs, so another candidate wins
    real = lt.LatencyModel.efficient_subnet

    def floor_greedy(self, sampler, keep, scores=None, min_keep=0.25):
        if min_keep >= 0.5:
            return real(self, sampler, keep, scores, min_keep)
        return {n: sampler.top(s, max(1, math.ceil(min_keep * s.numel())))
                for n, s in sampler.scores(scores).items()}
    monkeypatch.setattr(lt.LatencyModel, 'efficient_subnet', floor_greedy)
    worst = floor_greedy(lm, pruner.sampler, 0.6, scores)
    sub = pruner.sample_subnet_for_latency(0.6, scores, mode='efficient',
                                           **opts)
    rep = pruner.last_latency_report
    assert rep['candidate'] != 'greedy', rep
    assert pruner.estimate_flops(sub) > 2 * pruner.estimate_flops(worst)
    # the floor still holds for whichever candidate won
    for name, m in sub.items():
        assert int(m.sum()) >= math.ceil(0.25 * m.numel()), name
