"""The Ampere 2:4 scheduler (sparsity/ampere_scheduler.py)."""
import pytest
import torch
import torch.nn.functional as F

from helpers.data import random_batches
from helpers.models import WideNet, resnet20
from mmrazor_ext.sparsity import build_sparse_scheduler, dense_weight, nm_compliant
from mmrazor_ext.sparsity.mask_generators import kept_magnitude_nm


@pytest.mark.parametrize('recompute', [False, True])
def test_ampere_2to4_eligible_layers_after_steps(recompute):
    model = resnet20()
    sched = build_sparse_scheduler(dict(scheduler=dict(
        type='AmpereScheduler', kwargs=dict(
            mask_calculator='m4n2_1d', allow_recompute_mask=recompute,
            allow_permutation=False, verbosity=0))))
    model = sched.prepare_sparse_model(model)
    # in=1 stem and the 64->10 classifier are not 2:4 eligible.
    assert 'backbone.conv1' in sched.skipped and 'fc' in sched.skipped
    assert len(sched.layers) == 20  # 18 block convs + 2 downsample convs
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    sched.init_optimizer(opt)
    for x, y in random_batches(3):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()  # the only call: masks re-applied
    for name, layer in sched.layers.items():
        assert nm_compliant(layer.weight), name
        if not recompute:  # stored weights are 2:4 too
            assert nm_compliant(dense_weight(layer)), name
    assert abs(sched.global_sparsity() - 0.5) < 1e-6


def test_ampere_permutation_keeps_function_and_raises_magnitude():
    torch.manual_seed(0)
    model = WideNet().eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = model(x)
    before = kept_magnitude_nm(model.conv2.weight)
    sched = build_sparse_scheduler(dict(scheduler=dict(
        type='AmpereScheduler', kwargs=dict(
            allow_permutation=True, allow_recompute_mask=True,
            permutation_iters=100))))
    sched.prepare_sparse_model(model, init_masks=False)
    sched.search_permutations()
    report = sched.permutation_report
    assert 'conv2' in report  # conv1 -> bn1 -> relu -> conv2 chain
    b, a = report['conv2']
    assert abs(b - before) < 1e-3 and a > b
    # Same function with dense masks (the permutation is exact).
    with torch.no_grad():
        assert torch.allclose(model(x), ref, atol=1e-4)
