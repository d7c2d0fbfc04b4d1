"""Residual block discovery and removal on the graph (graph/blocks.py)."""
import copy

import pytest
import torch
from torch import nn

from helpers import BASELINE

X = torch.randn(1, 1, 28, 28)


def _removed_flops(model, names, skip=()):
    from mmrazor_ext.estimators import get_model_complexity
    layers = get_model_complexity(model, X, per_layer=True)['layers']
    return sum(v['flops'] for k, v in layers.items()
               if any(k.startswith(n + '.') for n in names) and k not in skip)


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
    from mmrazor_ext.apis.model_loading import build_from_config
    from mmrazor_ext.estimators import get_model_complexity
    from mmrazor_ext.graph import find_blocks, remove_blocks
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
