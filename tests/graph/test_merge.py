"""Merging a linear residual block into one conv (graph/merge.py)."""
import copy
import re

import pytest
import torch
from torch import nn

from helpers.models import randomise

X = torch.randn(1, 1, 28, 28)


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
    model = randomise(_LinNet(_LinBlock())).eval()
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
    from mmrazor_ext.graph import MergeMeter, find_blocks, find_mergeable, merge_blocks
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
    model = randomise(MobileNetV2(widen_factor=0.25))
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
