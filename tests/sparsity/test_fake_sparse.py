"""Fake-sparse layers and model preparation: masks round-trip, dense
checkpoints load, leaf modules stay dense (sparsity/fake_sparse.py,
sparse_modules.py, base_scheduler.py)."""
import copy

import torch
from torch import nn

from helpers.models import resnet20
from helpers.sparsity import amba_cfg
from mmrazor_ext.sparsity import build_sparse_scheduler, strip_fake_sparse


def test_prepare_masks_round_trip_and_no_prune():
    model = resnet20()
    ref = copy.deepcopy(model)
    sched = build_sparse_scheduler(amba_cfg(
        no_prune_layer='backbone.conv1', no_prune_keyword=['downsample']))
    sched.prepare_sparse_model(model)
    assert 'backbone.conv1' not in sched.layers
    assert not any('downsample' in n for n in sched.layers)
    assert 'fc' in sched.layers and len(sched.layers) == 19
    assert type(model.backbone.conv1) is nn.Conv2d  # stays dense
    assert torch.equal(model.backbone.conv1.weight, ref.backbone.conv1.weight)
    sd = model.state_dict()
    mask_keys = [k for k in sd if k.endswith('weight_fake_sparse.mask')]
    assert len(mask_keys) == 19
    assert 'fc.weight' in sd  # the dense weight keeps its key
    # Masks round-trip through state_dict into a freshly prepared model.
    other = resnet20()
    sched2 = build_sparse_scheduler(amba_cfg(
        no_prune_layer='backbone.conv1', no_prune_keyword=['downsample']))
    sched2.prepare_sparse_model(other, init_masks=False)
    assert abs(sched2.global_sparsity()) < 1e-9
    other.load_state_dict(sd)
    assert abs(sched2.global_sparsity() - 0.3) < 0.015
    x = torch.randn(2, 1, 28, 28)
    model.eval()
    other.eval()
    assert torch.allclose(model(x), other(x))
    # Stripping bakes the masks into plain layers with the same output.
    out = model(x)
    strip_fake_sparse(model)
    assert type(model.fc) is nn.Linear
    assert torch.allclose(model(x), out, atol=1e-6)


def test_dense_checkpoint_loads_into_prepared_model():
    model = resnet20()
    dense_sd = copy.deepcopy(model.state_dict())
    sched = build_sparse_scheduler(amba_cfg())
    sched.prepare_sparse_model(model, init_masks=False)
    missing, unexpected = model.load_state_dict(dense_sd, strict=False)
    assert not unexpected and all(k.endswith('.mask') for k in missing)


def test_leaf_module_layers_stay_dense():
    model = resnet20()
    sched = build_sparse_scheduler(dict(amba_cfg(), leaf_module=['ResLayer']))
    sched.prepare_sparse_model(model)
    # Every conv of the residual stages sits inside a ResLayer leaf.
    assert set(sched.layers) == {'backbone.conv1', 'fc'}
