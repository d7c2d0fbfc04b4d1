"""Knight's block / 2:4 sparsity (sparsity/block_scheduler.py)."""
import pytest
import torch
import torch.nn.functional as F

from helpers.data import random_batches
from helpers.models import WideNet
from mmrazor_ext.sparsity import (
    SparsityConfigError,
    block_aligned,
    build_sparse_scheduler,
    dense_weight,
    nm_compliant,
)


def test_block_sparsity_aligned_tiles_and_steps():
    torch.manual_seed(0)
    model = WideNet()
    sched = build_sparse_scheduler(dict(scheduler=dict(
        type='BlockSparseScheduler',
        kwargs=dict(sparsity_method='CustomPruner', target_sparsity=0.5))))
    model = sched.prepare_sparse_model(model)
    assert set(sched.layers) == {'conv2', 'conv3', 'fc'}
    assert 'big' in sched.skipped and 'conv1' in sched.skipped
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    sched.init_optimizer(opt)
    for x, y in random_batches(2, shape=(4, 3, 16, 16), classes=64):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    for name, layer in sched.layers.items():
        w = dense_weight(layer)
        assert block_aligned(w), name
        tiles = (w.shape[0] // 64) * (w.shape[1] // 32)
        zero = int((w == 0).sum()) // (64 * 32 * (w[0, 0].numel()))
        assert zero == round(0.5 * tiles), name


def test_pruner2to4_and_bad_target():
    model = WideNet()
    sched = build_sparse_scheduler(dict(scheduler=dict(
        type='BlockSparseScheduler',
        kwargs=dict(sparsity_method='Pruner2to4', target_sparsity=0.5))))
    sched.prepare_sparse_model(model)
    assert all(nm_compliant(layer.weight) for layer in sched.layers.values())
    with pytest.raises(SparsityConfigError, match='target_sparsity'):
        build_sparse_scheduler(dict(scheduler=dict(
            type='BlockSparseScheduler',
            kwargs=dict(sparsity_method='Pruner2to4', target_sparsity=0.7))))
