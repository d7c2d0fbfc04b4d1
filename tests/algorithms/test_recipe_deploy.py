"""The recipe's Deploy stage and stage measurements
(algorithms/recipe_deploy.py): prune -> sparsify -> bake + fold -> ONNX."""
import copy
import os

import pytest
import torch
from torch import nn

from helpers.data import random_batches
from helpers.models import WideNet, randomise, resnet20
from helpers.sparsity import amba_cfg
from mmrazor_ext.algorithms import recipe_deploy
from mmrazor_ext.algorithms.recipe_deploy import (
    deploy_model,
    detect_pattern,
    export_onnx,
    measure_stage,
)
from mmrazor_ext.pruners import ChannelPruner
from mmrazor_ext.sparsity import (
    build_sparse_scheduler,
    dense_weight,
    is_sparse_layer,
    nm_compliant,
    nm_eligible,
)

X1 = torch.randn(1, 1, 28, 28)
X4 = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def _pruned_resnet20():
    """ResNet-20 (1 channel) with 50 % of every channel space removed, widths
    multiples of 4, non-trivial BN statistics."""
    model = randomise(resnet20())
    pruner = ChannelPruner(model, X1, divisor=4)
    pruner.set_subnet(pruner.sample_subnet_uniform(
        0.5, pruner.get_metric_local('l1')))
    try:
        small = pruner.export()
    finally:
        pruner.clear_subnet()
    return randomise(small, seed=1), model


@pytest.fixture(scope='module')
def pruned_24():
    """(dense model, pruned model, pruned + Ampere 2:4 model, its scheduler)."""
    small, dense = _pruned_resnet20()
    sparse = copy.deepcopy(small)
    sched = build_sparse_scheduler(dict(scheduler=dict(
        type='AmpereScheduler', kwargs=dict(mask_calculator='m4n2_1d'))))
    sched.prepare_sparse_model(sparse)  # computes the masks (mask step)
    sparse.eval()
    return dense, small, sparse, sched


def test_prune_24_fold_onnx_equal_and_still_24(pruned_24, tmp_path):
    pytest.importorskip('onnxruntime')
    import onnx
    import onnxruntime as ort
    _, _, sparse, sched = pruned_24
    assert len(sched.layers) >= 8  # layer2 / layer3 convs of the pruned net
    path = str(tmp_path / 'deploy' / 'model.onnx')
    deployed, info = deploy_model(sparse, X4, onnx_path=path, rtol=1e-4)
    # The input model is untouched (the recipe can still resume it).
    assert all(is_sparse_layer(sparse.get_submodule(n)) for n in sched.layers)
    assert not any(is_sparse_layer(m) for m in deployed.modules())
    # BN is gone: every BN of ResNet-20 follows a conv.
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                   for m in deployed.modules())
    assert info['remaining_bn'] == [] and len(info['fused_pairs']) == 21
    assert set(info['stripped_layers']) == set(sched.layers)
    # Every eligible layer is 2:4 after folding, with exactly the zeros the
    # masks chose (folding scaled output channels, added a bias).
    eligible = [n for n, m in deployed.named_modules()
                if isinstance(m, nn.Conv2d) and nm_eligible(m.weight.shape)]
    assert set(eligible) == set(sched.layers)
    for name in eligible:
        conv = deployed.get_submodule(name)
        mask = sched.layers[name].weight_fake_sparse.mask
        assert info['patterns_before'][name]['pattern'] == '2:4', name
        assert info['patterns_after'][name]['pattern'] == '2:4', name
        assert nm_compliant(conv.weight), name
        assert torch.equal(conv.weight != 0, mask), name
        assert conv.bias is not None
    # ONNX equals PyTorch (deploy_model checked it; checked again here on
    # another batch size through the dynamic axis).
    assert info['onnx'] == path and info['max_rel_diff'] <= 1e-4
    assert sorted(os.listdir(tmp_path / 'deploy')) == ['model.onnx']
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert 'BatchNormalization' not in ops
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        ref = sparse(x)
    got = ort.InferenceSession(path, providers=['CPUExecutionProvider']).run(
        None, {'input': x.numpy()})[0]
    rel = (ref - torch.from_numpy(got)).abs().max() / ref.abs().max()
    assert float(rel) <= 1e-4


def test_broken_pattern_after_folding_names_the_layer(pruned_24, tmp_path,
                                                      monkeypatch):
    _, _, sparse, _ = pruned_24
    target = 'backbone.layer3.1.conv1'
    real_fold = recipe_deploy.fold_bn

    def fold_and_corrupt(model, *args, **kwargs):
        model = real_fold(model, *args, **kwargs)
        w = model.get_submodule(target).weight
        with torch.no_grad():
            w[(w == 0).nonzero()[0].tolist()] = 0.5  # one pruned weight back
        return model

    monkeypatch.setattr(recipe_deploy, 'fold_bn', fold_and_corrupt)
    path = tmp_path / 'model.onnx'
    with pytest.raises(ValueError, match=target.replace('.', r'\.')):
        deploy_model(sparse, X4, onnx_path=str(path))
    assert not path.exists()  # nothing exported from a broken model


def test_amba_unstructured_survives_folding(pruned_24):
    _, small, _, _ = pruned_24
    model = copy.deepcopy(small)
    sched = build_sparse_scheduler(amba_cfg(total_iters=9,
                                            sparsity_table=[30, 50, 70]))
    sched.prepare_sparse_model(model)
    sched.update(6)  # enter the last stage: 70 % global sparsity
    assert abs(sched.global_sparsity() - 0.7) <= 0.015
    deployed, info = deploy_model(model, X4, onnx_path=None)
    assert info['onnx'] is None and info['max_rel_diff'] is None
    assert info['fold_rel_diff'] <= 1e-4
    unstructured = [n for n, p in info['patterns_before'].items()
                    if p['pattern'] == 'unstructured']
    assert len(unstructured) >= len(sched.layers) - 2
    for name, layer in sched.layers.items():
        before = info['patterns_before'][name]
        after = info['patterns_after'][name]
        assert after == before, name
        w = deployed.get_submodule(name).weight
        assert torch.equal(w == 0, ~layer.weight_fake_sparse.mask), name


def test_block_sparsity_survives_folding_even_with_a_zero_gamma():
    model = randomise(WideNet())
    with torch.no_grad():
        model.bn2.weight[5] = 0.0  # folding zeroes filter 5 of conv2 too
    sched = build_sparse_scheduler(dict(scheduler=dict(
        type='BlockSparseScheduler',
        kwargs=dict(sparsity_method='CustomPruner', target_sparsity=0.5))))
    sched.prepare_sparse_model(model)
    model.eval()
    x = torch.randn(2, 3, 16, 16)
    deployed, info = deploy_model(model, x)
    assert ['conv2', 'bn2'] in info['fused_pairs']
    for name in ('conv2', 'conv3', 'fc'):
        assert info['patterns_before'][name]['pattern'] == 'block32x64', name
    assert info['patterns_after']['conv3']['pattern'] == 'block32x64'
    w = deployed.conv2.weight
    mask = sched.layers['conv2'].weight_fake_sparse.mask
    assert not w[~mask].any()  # every zeroed tile is still zero
    assert not w[5].any()  # plus the filter of the zero gamma
    assert info['patterns_after']['conv2']['pattern'] == 'unstructured'
    # The pattern detector itself.
    assert detect_pattern(dense_weight(sched.layers['conv3']) *
                          sched.layers['conv3'].weight_fake_sparse.mask
                          )['pattern'] == 'block32x64'
    assert detect_pattern(torch.ones(8, 16))['pattern'] == 'dense'


def test_export_onnx_failed_check_leaves_no_file(tmp_path):
    pytest.importorskip('onnxruntime')
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(64, 3))
    x = torch.randn(2, 1, 6, 6)
    path = tmp_path / 'm.onnx'
    path.write_bytes(b'previous')
    with pytest.raises(ValueError, match="ONNX output 'logits'"):
        export_onnx(model, x, str(path), atol=-1.0)  # nothing can pass
    assert path.read_bytes() == b'previous'
    assert sorted(os.listdir(tmp_path)) == ['m.onnx']
    summary = export_onnx(model, x, str(path), rtol=1e-5,
                          check_inputs=torch.randn(5, 1, 6, 6))
    assert summary['checked'] and summary['max_rel_diff'] <= 1e-5
    with pytest.raises(ValueError, match='example_inputs'):
        export_onnx(model, (x, x), str(path))


def test_measure_stage_numbers_are_consistent(pruned_24):
    dense, small, sparse, sched = pruned_24
    loader = random_batches(2, shape=(4, 1, 28, 28))
    kw = dict(latency_batch=2, repeats=2)
    m_dense = measure_stage(dense, X1, test_loader=loader, **kw)
    m_small = measure_stage(small, X1, **kw)
    m_sparse = measure_stage(sparse, X1, **kw)
    assert m_small['macs'] < m_dense['macs']
    assert m_small['params'] < m_dense['params']
    assert m_dense['nonzero_params'] == m_dense['params']
    assert m_dense['sparsity'] == 0.0 and m_dense['sparsity_by_pattern'][
        '2:4'] == 0.0
    assert 0.0 <= m_dense['top1'] <= 100.0 and m_small['top1'] is None
    assert all(m['latency_ms'] > 0 for m in (m_dense, m_small, m_sparse))
    # Masks do not change the structure; the non-zero count drops by
    # exactly the masked weights.
    assert m_sparse['macs'] == m_small['macs']
    assert m_sparse['params'] == m_small['params']
    masked = sum(int((~layer.weight_fake_sparse.mask).sum())
                 for layer in sched.layers.values())
    assert m_sparse['nonzero_params'] == m_sparse['params'] - masked
    assert m_sparse['nonzero_params'] < m_sparse['params']
    assert m_sparse['sparsity_by_pattern']['2:4'] == 1.0
    assert m_sparse['pattern_counts']['2:4'] == len(sched.layers)
    prunable = sum(m.weight.numel() for m in small.modules()
                   if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert m_sparse['sparsity'] == pytest.approx(masked / prunable)
    assert all(is_sparse_layer(m) for m in sched.layers.values())  # unchanged
    with pytest.raises(ValueError, match='device'):
        measure_stage(small, X1, device='cuda')
