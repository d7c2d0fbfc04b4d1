"""Layer pruning on the graph (block discovery / removal, merging, block
metrics) and conv / linear + BN folding; LayerFusion as an algorithm is in
tests/test_fusion_algorithm.py."""
import copy
import os
import re

import pytest
import torch
from torch import nn

from conftest import ROOT

BASELINE = os.path.join(ROOT, 'configs/baselines/resnet20_1xb128_fashionmnist.py')
X = torch.randn(1, 1, 28, 28)


def randomise_bn(model, seed=0):
    """Non-trivial BN statistics and affine parameters (so that folding and
    block removal are tested on something other than identities)."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=gen) - 0.5)
    return model


@pytest.fixture(scope='module')
def resnet20():
    from mmrazor_ext.models import CifarResNet
    torch.manual_seed(0)
    return randomise_bn(CifarResNet(20, 10, 1)).eval()


@pytest.fixture(scope='module')
def blocks20(resnet20):
    from mmrazor_ext.graph import find_blocks
    return find_blocks(resnet20, X)


def _removed_flops(model, names, skip=()):
    from mmrazor_ext.estimators import get_model_complexity
    layers = get_model_complexity(model, X, per_layer=True)['layers']
    return sum(v['flops'] for k, v in layers.items()
               if any(k.startswith(n + '.') for n in names) and k not in skip)


# -- discovery and removal ------------------------------------------------------
def test_resnet20_blocks_found_with_reasons(blocks20):
    names = list(blocks20.blocks)
    assert names == [f'backbone.layer{s}.{i}' for s in (1, 2, 3)
                     for i in range(3)]
    non = {n: b for n, b in blocks20.blocks.items() if not b.removable}
    assert set(non) == {'backbone.layer2.0', 'backbone.layer3.0'}
    for name, info in non.items():
        assert 'projection shortcut' in info.reason
        assert f'{name}.downsample.0' in info.reason  # names the module
        assert info.in_shape != info.out_shape
        assert info.can_keep_shortcut
    for name in blocks20.removable:
        info = blocks20.blocks[name]
        assert info.reason == '' and info.shortcut_modules == []
        assert info.in_shape == info.out_shape


def test_remove_blocks_runs_and_drops_exact_flops(resnet20, blocks20):
    from mmrazor_ext.estimators import get_model_complexity
    from mmrazor_ext.graph import remove_blocks
    names = ['backbone.layer1.1', 'backbone.layer2.2', 'backbone.layer3.1']
    small = remove_blocks(resnet20, names, blocks20)
    assert isinstance(small.backbone.layer2[2], nn.Identity)
    assert not isinstance(resnet20.backbone.layer2[2], nn.Identity)  # copy
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert small(x).shape == (2, 10)
    before = get_model_complexity(resnet20, X)['flops']
    after = get_model_complexity(small, X)['flops']
    assert before - after == _removed_flops(resnet20, names) > 0


def test_non_removable_block_raises_with_reason(resnet20, blocks20):
    from mmrazor_ext.graph import remove_blocks
    with pytest.raises(ValueError, match='projection shortcut'):
        remove_blocks(resnet20, ['backbone.layer2.0'], blocks20)
    with pytest.raises(ValueError, match='not a residual block'):
        remove_blocks(resnet20, ['backbone.layer2'], blocks20)


def test_keep_shortcut_drops_branch_only(resnet20, blocks20):
    from mmrazor_ext.estimators import get_model_complexity
    from mmrazor_ext.graph import find_blocks, remove_blocks
    name = 'backbone.layer2.0'
    small = remove_blocks(resnet20, [name], blocks20, mode='keep_shortcut')
    block = resnet20.backbone.layer2[0]
    x = torch.randn(2, 16, 28, 28)
    with torch.no_grad():
        # the shortcut path of the original block: relu(downsample(x))
        want = block.relu(block.downsample(x))
        got = small.backbone.layer2[0](x)
    torch.testing.assert_close(got, want)
    before = get_model_complexity(resnet20, X)['flops']
    after = get_model_complexity(small, X)['flops']
    info = blocks20.blocks[name]
    assert before - after == _removed_flops(
        resnet20, [name], skip=set(info.shortcut_modules))
    # in place, the kept shortcut keeps its Parameter objects (so an
    # optimizer built before the cut still trains them)
    model = copy.deepcopy(resnet20)
    params = set(map(id, model.get_submodule(name).downsample.parameters()))
    remove_blocks(model, [name], find_blocks(model, X), mode='keep_shortcut',
                  inplace=True)
    assert set(map(id, model.get_submodule(name).parameters())) == params


def test_image_classifier_from_config():
    from mmrazor_ext.estimators import get_model_complexity
    from mmrazor_ext.graph import find_blocks, remove_blocks
    from mmrazor_ext.apis.model_loading import build_from_config
    _, model, example = build_from_config(BASELINE)
    blocks = find_blocks(model, example)
    assert len(blocks.blocks) == 9 and len(blocks.removable) == 7
    small = remove_blocks(model, blocks.removable[:2], blocks)
    with torch.no_grad():
        assert small(example, mode='tensor').shape == (1, 10)
    layers = get_model_complexity(model, example, per_layer=True)['layers']
    removed = sum(v['flops'] for k, v in layers.items()
                  if any(k.startswith(n + '.') for n in blocks.removable[:2]))
    assert get_model_complexity(model, example)['flops'] - \
        get_model_complexity(small, example)['flops'] == removed


def test_mobilenetv2_inverted_residuals():
    from mmpretrain.models import MobileNetV2

    from mmrazor_ext.graph import find_blocks, remove_blocks
    model = MobileNetV2(widen_factor=0.25)
    model.eval()
    x = torch.randn(1, 3, 32, 32)
    blocks = find_blocks(model, x)
    # exactly the InvertedResidual blocks that add their input (stride 1,
    # in == out channels), read from mmpretrain's own flag
    want = [n for n, m in model.named_modules()
            if type(m).__name__ == 'InvertedResidual' and m.use_res_connect]
    assert len(want) >= 10
    assert blocks.removable == want
    small = remove_blocks(model, want, blocks)
    with torch.no_grad():
        assert small(x)[-1].shape == model(x)[-1].shape


class _PoolShortcut(nn.Module):
    """Same shapes, but the shortcut is a (function) pooling, not x."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(x) + torch.nn.functional.avg_pool2d(x, 3, 1, 1)


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(1, 4, 6, 6))
        self.a = _PoolShortcut()
        self.b = nn.Sequential(nn.Conv2d(4, 4, 1))
        self.c = _Residual(nn.Conv2d(4, 4, 1))

    def forward(self, x):
        return self.c(self.a(x + self.pos)) + self.b(x)


class _Residual(nn.Module):
    def __init__(self, f):
        super().__init__()
        self.f = f

    def forward(self, x):
        return x + self.f(x)


def test_blocks_need_an_identity_shortcut():
    from mmrazor_ext.graph import find_blocks, remove_blocks
    model = _Toy()
    blocks = find_blocks(model, torch.randn(1, 4, 6, 6))
    # the root's adds (parameter, two branches) are no blocks
    assert list(blocks.blocks) == ['a', 'c']
    assert blocks.removable == ['c']
    assert 'shortcut is not the block input' in blocks.blocks['a'].reason
    assert 'avg_pool2d' in blocks.blocks['a'].reason
    small = remove_blocks(model, ['a'], blocks, mode='keep_shortcut')
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(
            small.a(x), torch.nn.functional.avg_pool2d(x, 3, 1, 1))


# -- block merging --------------------------------------------------------------------
class _LinBlock(nn.Module):
    """3x3 grouped conv -> BN -> ReLU -> 1x1 conv -> BN, + x, ReLU: only the
    first conv is padded, so the merge is exact on every pixel."""

    def __init__(self, c=4, mid=6):
        super().__init__()
        self.conv1 = nn.Conv2d(c, mid, 3, padding=1, groups=2)
        self.bn1 = nn.BatchNorm2d(mid)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(mid, c, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.drop = nn.Dropout(0.1)

    def forward(self, x):
        y = self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))
        return torch.relu(x + self.drop(y))


class _LinNet(nn.Module):
    def __init__(self, block):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block = block
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.block(self.stem(x)).mean((2, 3)))


def test_merge_is_exact_for_a_linear_branch():
    from mmrazor_ext.graph import (
        MergeMeter,
        check_equivalence,
        find_blocks,
        find_mergeable,
        merge_blocks,
    )
    torch.manual_seed(0)
    model = randomise_bn(_LinNet(_LinBlock())).eval()
    bn1 = model.block.bn1
    bn1.weight.data.fill_(0.1)
    bn1.bias.data.fill_(30.0)  # pre-activations > 0: the ReLU never acts
    x = torch.randn(4, 3, 9, 9)
    blocks = find_blocks(model, x[:1])
    info = find_mergeable(blocks)['block']
    assert info.mergeable and info.exact
    assert info.kernel_size == (3, 3) and info.padding == (1, 1)
    meter = MergeMeter(model, blocks)
    meter.update(x)
    st = meter.statistics()['block']
    assert st['changed'] == 0 and st['nonlinearity'] == 0
    assert st['merge_error'] <= 1e-5
    merged = merge_blocks(model, ['block'], blocks)
    assert merged.block.merged_conv.groups == 1  # grouped conv expanded
    assert not any(isinstance(m, nn.BatchNorm2d) for m in merged.modules())
    rep = check_equivalence(model, merged, (x,))
    assert rep['rel_diff'] <= 1e-5, rep
    # with an active ReLU the same rule measures a real error
    bn1.bias.data.fill_(0.0)
    bn1.weight.data.fill_(1.0)
    meter = MergeMeter(model, find_blocks(model, x[:1]))
    meter.update(x)
    st = meter.statistics()['block']
    assert 0.2 < st['changed'] < 0.8 and st['merge_error'] > 0.1


def test_merged_basic_block_matches_in_the_interior(resnet20):
    """3x3 o 3x3 -> 5x5: exact where no intermediate zero padding is read
    (documented: the 1-pixel output ring differs)."""
    from mmrazor_ext.graph import find_blocks, find_mergeable, merge_blocks
    model = copy.deepcopy(resnet20)
    name = 'backbone.layer1.1'
    block = model.get_submodule(name)
    block.norm1.bias.data.fill_(20.0)  # intermediate ReLU inactive
    blocks = find_blocks(model, X)
    info = find_mergeable(blocks)[name]
    assert info.mergeable and not info.exact
    assert info.kernel_size == (5, 5) and info.padding == (2, 2)
    w, ref = block.conv1.weight, copy.deepcopy(block)
    merged = merge_blocks(model, [name], blocks, inplace=True)
    new = merged.get_submodule(name)
    # in place: reused Parameter objects (an optimizer keeps training them)
    assert new.merged_conv.weight is w and w.shape == (16, 16, 5, 5)
    assert new.merged_conv.bias is block.norm2.bias
    x = torch.randn(2, 16, 12, 12)
    with torch.no_grad():
        want, got = ref(x), new(x)
    scale = float(want.abs().max())
    inner = (want - got)[..., 1:-1, 1:-1].abs().max() / scale
    assert inner <= 1e-5
    assert (want - got).abs().max() / scale > 1e-3  # the border ring


def test_merge_flops_and_reasons(resnet20, blocks20):
    from mmrazor_ext.algorithms import merge_flops_delta
    from mmrazor_ext.estimators import get_model_complexity
    from mmrazor_ext.graph import find_mergeable, merge_blocks
    infos = find_mergeable(blocks20)
    assert [n for n, i in infos.items() if i.mergeable] == blocks20.removable
    assert infos['backbone.layer2.0'].reason.startswith(
        'not removable: projection shortcut')
    names = ['backbone.layer1.2', 'backbone.layer3.1']
    delta = merge_flops_delta(resnet20, blocks20, names)
    for n, (c, hw) in zip(names, ((16, 784), (64, 49))):
        # 5x5 conv replaces two 3x3 convs and two BNs
        assert delta[n] == 25 * c * c * hw - 18 * c * c * hw - 2 * c * hw
    small = merge_blocks(resnet20, names, blocks20)
    before = get_model_complexity(resnet20, X)['flops']
    assert get_model_complexity(small, X)['flops'] - before == \
        sum(delta.values())
    with pytest.raises(ValueError, match='cannot be merged: not removable'):
        merge_blocks(resnet20, ['backbone.layer3.0'], blocks20)


class _Odd(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.a = nn.Conv2d(4, 4 if kind != 'cat' else 2, 3, padding=2,
                           dilation=2 if kind == 'dilated' else 1)
        if kind != 'dilated':
            self.a.padding = (1, 1)
        self.b = nn.Conv2d(4, 2, 1)
        self.pool = nn.MaxPool2d(3, 1, 1)

    def forward(self, x):
        if self.kind == 'cat':
            return x + torch.cat([self.a(x), self.b(x)], 1)
        if self.kind == 'pool':
            return x + self.pool(self.a(x))
        return x + self.a(x)


@pytest.mark.parametrize('kind,reason', [
    ('dilated', r'dilation \(2, 2\)'), ('pool', 'unsupported op.*MaxPool2d'),
    ('cat', 'branch is not a chain')])
def test_non_mergeable_blocks_have_reasons(kind, reason):
    from mmrazor_ext.graph import (
        MergeMeter,
        find_blocks,
        find_mergeable,
        merge_blocks,
    )
    model = nn.Sequential(_Odd(kind))
    blocks = find_blocks(model, torch.randn(1, 4, 6, 6))
    assert blocks.removable == ['0']
    info = find_mergeable(blocks)['0']
    assert not info.mergeable
    assert re.search(reason, info.reason), info.reason
    with pytest.raises(ValueError, match=reason):
        merge_blocks(model, ['0'], blocks)
    with pytest.raises(ValueError, match=reason):
        MergeMeter(model, blocks, ['0'])


def test_merge_mobilenetv2_saves_macs():
    from mmpretrain.models import MobileNetV2

    from mmrazor_ext.algorithms import merge_flops_delta
    from mmrazor_ext.graph import find_blocks, find_mergeable, merge_blocks
    model = randomise_bn(MobileNetV2(widen_factor=0.25))
    model.eval()  # mmpretrain's train() returns None
    x = torch.randn(1, 3, 32, 32)
    blocks = find_blocks(model, x)
    names = [n for n, i in find_mergeable(blocks).items() if i.mergeable]
    assert names == blocks.removable  # depthwise convs are expanded
    delta = merge_flops_delta(model, blocks, names)
    # 1x1 (t = 6) -> dw 3x3 -> 1x1 costs more than one dense c x c 3x3;
    # layer1.0 has t = 1 (dw 3x3 -> 1x1 only), so there merging costs MACs
    assert delta.pop('layer1.0') > 0
    assert len(delta) >= 9 and all(d < 0 for d in delta.values()), delta
    small = merge_blocks(model, names, blocks)
    with torch.no_grad():
        assert small(x)[-1].shape == model(x)[-1].shape


def test_plan_fusion_counts_merge_macs():
    from mmrazor_ext.algorithms import plan_fusion
    scores = {'a': 0.1, 'b': 0.2, 'c': 0.3, 'd': 0.4}
    saved = dict.fromkeys(scores, 10)
    merge = dict(errors={'a': 0.0, 'c': 0.05, 'd': 0.5}, linear_tol=0.1,
                 delta={'a': 4, 'c': 4, 'd': 4})
    cands = list(scores)
    # removal wins over merging; merges go to the remaining linear blocks
    assert plan_fusion(scores, cands, saved, 100, dict(
        mode='num_blocks', num=1), merge) == (['a'], ['c'])
    assert plan_fusion(scores, cands, saved, 100, dict(
        mode='num_blocks', num=0), merge) == ([], ['a', 'c'])
    assert plan_fusion(scores, cands, saved, 100, dict(
        mode='num_blocks', num=0), dict(merge, max_blocks=1)) == ([], ['a'])
    # FLOPs target 0.85: without merges 2 removals reach 80 <= 85; the merge
    # of 'c' (+4) still fits after 2 removals (84) ...
    target = dict(mode='flops', ratio=0.85)
    assert plan_fusion(scores, cands, saved, 100, target) == (['a', 'b'], [])
    assert plan_fusion(scores, cands, saved, 100, target, merge) == \
        (['a', 'b'], ['c'])
    # ... at 0.8 it does not (84 > 80): a third block is removed
    target = dict(mode='flops', ratio=0.8)
    assert plan_fusion(scores, cands, saved, 100, target, merge) == \
        (['a', 'b', 'c'], [])
    # merges that add MACs can be refused instead
    assert plan_fusion(scores, cands, saved, 100, target, dict(
        merge, allow_more_flops=False)) == (['a', 'b'], [])


# -- block metrics ------------------------------------------------------------------
def test_block_metrics_rank_a_dead_block_last(resnet20):
    from mmrazor_ext.graph import find_blocks
    from mmrazor_ext.metrics import BlockFeatureCollector
    from mmrazor_ext.registry import METRICS
    model = copy.deepcopy(resnet20)
    dead = 'backbone.layer2.1'
    model.get_submodule(dead).norm2.weight.data.zero_()
    model.get_submodule(dead).norm2.bias.data.zero_()
    blocks = find_blocks(model, X)
    col = BlockFeatureCollector(blocks)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        col.update(torch.randn(8, 1, 28, 28, generator=gen))
    stats = col.statistics()
    assert stats[dead]['n'] == 16
    for name in ('block_cka', 'block_cosine', 'block_weight_norm'):
        scores = METRICS.get(name)()(blocks, model, stats)
        assert set(scores) == set(blocks.blocks)
        live = [v for k, v in scores.items() if k != dead]
        # branch output 0 and input >= 0 (after ReLU): out == in exactly
        assert scores[dead] == pytest.approx(0.0, abs=1e-6), name
        assert min(live) > 1e-4, name
    cos = METRICS.get('block_cosine')()(blocks, model, stats)
    assert cos['backbone.layer2.0'] == float('inf')  # shapes differ


def test_linear_cka_matches_formula_and_is_scale_invariant():
    from mmrazor_ext.metrics import hsic_terms
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 5, generator=gen).double()
    y = x @ torch.randn(5, 7, generator=gen).double()

    def cka(a, b):
        kl, kk, ll = hsic_terms(a, b)
        return float(kl / (kk * ll).sqrt())
    xc, yc = x - x.mean(0), y - y.mean(0)
    # Kornblith et al.: ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)
    ref = float((yc.t() @ xc).norm() ** 2 /
                ((xc.t() @ xc).norm() * (yc.t() @ yc).norm()))
    assert cka(x, y) == pytest.approx(ref, rel=1e-9)
    assert cka(x, 3 * y) == pytest.approx(ref, rel=1e-9)
    assert cka(x, x) == pytest.approx(1.0)
    with pytest.raises(ValueError, match='needs collected features'):
        from mmrazor_ext.registry import METRICS
        METRICS.get('block_cka')()(None, None, None)


# -- conv / linear + BN folding ----------------------------------------------------
def test_fold_resnet20_via_pruner_export(resnet20):
    from mmrazor_ext.graph import check_equivalence
    from mmrazor_ext.pruners import ChannelPruner
    pruner = ChannelPruner(resnet20, X)
    pruner.set_subnet(pruner.sample_subnet_uniform(0.25))
    try:
        fused = pruner.export(fuse_bn=True)  # raises if not within 1e-5
        assert pruner.last_export_report['rel_diff'] <= 1e-5
        assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
        x = torch.randn(4, 1, 28, 28)
        assert check_equivalence(resnet20, fused, (x,))['rel_diff'] <= 1e-5
    finally:
        pruner.clear_subnet()


def test_fold_mobilenetv2_depthwise():
    from mmpretrain.models import MobileNetV2

    from mmrazor_ext.graph import check_equivalence, fold_bn
    model = randomise_bn(MobileNetV2(widen_factor=0.5))
    model.eval()
    dw = [m for m in model.modules() if isinstance(m, nn.Conv2d)
          and m.groups > 1 and m.groups == m.in_channels]
    assert dw  # really depthwise convolutions
    fused = fold_bn(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    rep = check_equivalence(model, fused, (torch.randn(2, 3, 32, 32),))
    assert rep['rel_diff'] <= 1e-5, rep


class _LinearBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, groups=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc1 = nn.Linear(8, 16)
        self.bn1 = nn.BatchNorm1d(16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x))).mean((2, 3))
        return self.fc2(torch.relu(self.bn1(self.fc1(x))))


def test_fold_linear_batchnorm1d():
    from mmrazor_ext.graph import check_equivalence, find_conv_bn_pairs, fold_bn
    from mmrazor_ext.pruners import ChannelPruner
    model = randomise_bn(_LinearBN()).eval()
    x = torch.randn(5, 3, 9, 9)
    # Linear + BN needs the shape check: skipped without example inputs
    assert find_conv_bn_pairs(model) == [('conv', 'bn')]
    assert find_conv_bn_pairs(model, x) == [('conv', 'bn'), ('fc1', 'bn1')]
    fused = fold_bn(model, x)
    assert isinstance(fused.bn1, nn.Identity)
    assert check_equivalence(model, fused, (x,))['rel_diff'] <= 1e-5
    # and through the pruner's export (graph's conv_bn_pairs)
    pruner = ChannelPruner(model, torch.randn(1, 3, 9, 9))
    assert ('fc1', 'bn1') in pruner.graph.conv_bn_pairs
    pruner.set_subnet(pruner.sample_subnet_uniform(0.5))
    small = pruner.export(fuse_bn=True)
    pruner.clear_subnet()
    assert isinstance(small.bn1, nn.Identity) and small.fc1.out_features == 8
