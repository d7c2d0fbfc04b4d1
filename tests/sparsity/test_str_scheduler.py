"""Soft threshold reparameterisation (sparsity/str_scheduler.py)."""
import torch
import torch.nn.functional as F

from helpers.data import random_batches
from helpers.models import resnet20
from mmrazor_ext.sparsity import build_sparse_scheduler, dense_weight


def test_str_formula_and_learned_sparsity():
    model = resnet20()
    sched = build_sparse_scheduler(dict(
        mask_generator=dict(type='STRMaskGenerator'),
        fake_sparse=dict(type='STRFakeSparse', kwargs=dict(sInit_value=-3)),
        scheduler=dict(type='BaseScheduler')))
    model = sched.prepare_sparse_model(model)
    layer = sched.layers['backbone.layer1.0.conv1']
    w = dense_weight(layer)
    thr = torch.sigmoid(torch.tensor(-3.0))
    expect = torch.sign(w) * torch.relu(w.abs() - thr)
    assert torch.allclose(layer.weight, expect)
    s0 = sched.global_sparsity()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, weight_decay=0.05)
    sched.init_optimizer(opt)
    s_before = layer.weight_fake_sparse.s.item()
    for x, y in random_batches(4):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    assert layer.weight_fake_sparse.s.item() != s_before  # thresholds learn
    assert sched.global_sparsity() > s0
    # The mask buffer mirrors W_eff != 0 (STRMaskGenerator) and round-trips.
    assert torch.equal(layer.weight_fake_sparse.mask.bool(), layer.weight != 0)
    sd = model.state_dict()
    assert 'backbone.layer1.0.conv1.weight_fake_sparse.s' in sd
