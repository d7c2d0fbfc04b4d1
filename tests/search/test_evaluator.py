"""The adaptive-BN evaluator (search/evaluator.py)."""
import pytest
import torch

from mmrazor_ext.estimators import get_model_complexity
from mmrazor_ext.search import AdaptiveBNEvaluator, bn_state


def _batches(n, bs=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(bs, 1, 28, 28, generator=g),
             torch.randint(0, 10, (bs,), generator=g)) for _ in range(n)]


def _same_state(a, b):
    return all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


def test_evaluator_restores_bn_and_is_repeatable(small_setup):
    model, pruner = small_setup
    ev = AdaptiveBNEvaluator(pruner, _batches(3), _batches(2, seed=1),
                             bn_batches=3)
    before = bn_state(model)
    a = pruner.sample_subnet_uniform(0.5)
    b = pruner.sample_subnet_uniform(0.2)
    ra = ev.evaluate(a)
    assert _same_state(before, bn_state(model))
    assert pruner.subnet is None                      # masks removed again
    rb = ev.evaluate(b)
    ra2 = ev.evaluate(a)                              # no leak from b
    assert ra == ra2 and ra != rb
    assert _same_state(before, bn_state(model))
    # the exported-copy mode scores the same subnet identically
    ex = AdaptiveBNEvaluator(pruner, _batches(3), _batches(2, seed=1),
                             bn_batches=3, mode='export')
    assert ex.evaluate(a)['top1'] == pytest.approx(ra['top1'])
    # FLOPs / params equal the exported model's
    pruner.set_subnet(a)
    small = pruner.export(check=False)
    cx = get_model_complexity(small, torch.randn(1, 1, 28, 28))
    assert (ra['flops'], ra['params']) == (cx['flops'], cx['params'])
    # a subnet that was set before the evaluation is put back
    ev.evaluate(b)
    assert all(torch.equal(pruner.subnet[k], a[k]) for k in a)
    pruner.clear_subnet()


def test_evaluator_recalibration_matters(small_setup):
    model, pruner = small_setup
    sub = pruner.sample_subnet_uniform(0.6)
    from mmrazor_ext.utils.evaluation import recalibrate_bn
    before = bn_state(model)
    pruner.set_subnet(sub)
    recalibrate_bn(model, _batches(3), 3)
    assert not _same_state(before, bn_state(model))
    from mmrazor_ext.search import load_bn_state
    load_bn_state(model, before)
    pruner.clear_subnet()
    with pytest.raises(ValueError, match='bn_batches'):
        AdaptiveBNEvaluator(pruner, _batches(1), _batches(1), bn_batches=4)
    with pytest.raises(ValueError, match='mode'):
        AdaptiveBNEvaluator(pruner, _batches(1), _batches(1), bn_batches=1,
                            mode='copy')
