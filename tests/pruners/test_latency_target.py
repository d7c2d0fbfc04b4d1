"""Latency as a pruning target: validation, table reuse, and a measured
landing on CIFAR ResNet-20."""
import os

import pytest
import torch

from helpers import ROOT
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
            clock='cpu')


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
    assert t == dict(mode='latency', ratio=0.5, sampling='global')
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


def _measured_ratio(dense, small, rounds=12):
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
    sub = pruner.sample_subnet_for_latency(0.5, scores, mode='uniform',
                                           **opts)
    rep = pruner.last_latency_report
    assert rep['estimated_ratio'] == pytest.approx(0.5, abs=0.08), rep
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
    assert {k: int(v.sum()) for k, v in sub_ms.items()} == \
        {k: int(v.sum()) for k, v in sub.items()}


def test_oneshot_algorithm_latency_mode(tmp_path):
    from mmengine.config import Config

    from mmrazor_ext.algorithms import IterativePruning, OneShotPruning
    from mmrazor_ext.registry import register_all_modules
    register_all_modules()
    cfg = Config.fromfile(BASELINE)
    torch.manual_seed(0)
    target = dict(mode='latency', ratio=0.6, sampling='uniform',
                  cache_dir=str(tmp_path), batch=4, grid=2, repeats=1,
                  num_threads=1, clock='cpu')
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
