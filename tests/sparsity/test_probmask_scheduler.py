"""ProbMask: budget, temperature and ramp; it needs its own scheduler
(sparsity/probmask_scheduler.py)."""
import pytest
import torch
import torch.nn.functional as F

from helpers.data import random_batches
from helpers.models import resnet20
from mmrazor_ext.sparsity import build_sparse_scheduler


# --- ProbMask ----------------------------------------------------------------
def test_probmask_budget_temperature_and_ramp():
    model = resnet20()
    total = 12
    sched = build_sparse_scheduler(dict(scheduler=dict(
        type='ProbMaskScheduler', kwargs=dict(
            total_iters=total, target_sparsity=0.6, init_temp=1.0,
            final_temp=0.1, ramp_end=0.5))))
    model = sched.prepare_sparse_model(model)
    assert sched.current_sparsity(0) == 0
    assert abs(sched.current_sparsity(3) - 0.6 * (1 - 0.5 ** 3)) < 1e-9
    assert sched.current_sparsity(6) == pytest.approx(0.6)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched.init_optimizer(opt)  # counts iterations: no LR scheduler given
    seen = []
    for x, y in random_batches(total):
        model.train()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        seen.append(sched.global_sparsity())
    assert sched.cur_iter == total
    assert abs(seen[-1] - 0.6) < 0.002  # hard eval mask meets the target
    assert seen[2] < seen[5]  # ramping up
    fs = sched.layers['fc'].weight_fake_sparse
    assert float(fs.temperature) == pytest.approx(0.1)
    n = sum(layer.weight.numel() for layer in sched.layers.values())
    budget = sum(float(lay.weight_fake_sparse.scores.sum())
                 for lay in sched.layers.values())
    assert budget == pytest.approx(0.4 * n, rel=1e-3)
    model.eval()
    assert sched.global_sparsity() == pytest.approx(
        1 - sum(float((lay.weight != 0).sum()) for lay in sched.layers.values()) / n,
        abs=1e-6)


# -- ProbMask needs its scheduler -------------------------------------------
@pytest.mark.parametrize('scheduler', [
    dict(type='BaseScheduler'),
    dict(type='AmbaLevelPruneScheduler',
         kwargs=dict(total_iters=9, sparsity_table=[30])),
])
def test_probmask_under_another_scheduler_is_an_error(scheduler):
    from mmrazor_ext.sparsity import (
        BaseScheduler,
        ProbMaskFakeSparse,
        SparsityConfigError,
        build_sparse_scheduler,
    )
    with pytest.raises(SparsityConfigError,
                       match=r'mask_generator.type: ProbMaskGenerator needs '
                             r'scheduler.type ProbMaskScheduler'):
        build_sparse_scheduler(dict(
            scheduler=scheduler,
            mask_generator=dict(type='ProbMaskGenerator'),
            fake_sparse=dict(type='ProbMaskFakeSparse')))
    with pytest.raises(SparsityConfigError,
                       match='fake_sparse.type: ProbMaskFakeSparse needs'):
        BaseScheduler(fake_sparse=(ProbMaskFakeSparse, {}))
    # the right scheduler builds
    build_sparse_scheduler(dict(scheduler=dict(
        type='ProbMaskScheduler',
        kwargs=dict(total_iters=10, target_sparsity=0.5))))
