"""Tracer, channel rules, ChannelSpaces, masking and export on small nets."""
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from helpers.models import randomise
from mmrazor_ext.graph import (
    ChannelGraph,
    TraceError,
    UnsupportedOpError,
    register_function_rule,
    trace_model,
)
from mmrazor_ext.models import CifarResNet
from mmrazor_ext.pruners import ChannelPruner


def space_of(graph, layer, role='out'):
    spaces = {s for s, _, _ in graph.channel_map(layer, role)}
    assert len(spaces) == 1, (layer, spaces)
    return spaces.pop()


def prune_check(model, x, ratio=0.5, seed=0, **kw):
    """Random subnet -> export -> equivalence; returns (pruner, small)."""
    pruner = ChannelPruner(model, x, **kw)
    g = torch.Generator().manual_seed(seed)
    scores = {n: torch.rand(s.num_channels, generator=g)
              for n, s in pruner.channel_spaces.items()}
    pruner.set_subnet(pruner.sample_subnet_uniform(ratio, scores))
    small = pruner.export()
    assert pruner.last_export_report['ok']
    with torch.no_grad():
        assert small(x).shape == model(x).shape
    return pruner, small


# --- tracer -----------------------------------------------------------------
class _Untraceable(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow
            return x
        return -x


class _Wrapper(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.block = _Untraceable()

    def forward(self, x):
        return self.block(self.conv(x))


def test_trace_error_names_module_and_leaf_modules_fixes_it():
    with pytest.raises(TraceError, match=r"'block'.*leaf_modules"):
        trace_model(_Wrapper())
    gm = trace_model(_Wrapper(), leaf_modules=(_Untraceable,))
    targets = [n.target for n in gm.graph.nodes if n.op == 'call_module']
    assert targets == ['conv', 'block']
    gm = trace_model(_Wrapper(), leaf_modules=('block',))
    assert 'block' in [n.target for n in gm.graph.nodes]


def test_trace_image_classifier_tensor_path():
    from mmrazor_ext.registry import MODELS, register_all_modules
    register_all_modules()
    model = MODELS.build(dict(
        type='mmpretrain.ImageClassifier',
        backbone=dict(type='ResNet_CIFAR', depth=20),
        neck=dict(type='mmpretrain.GlobalAveragePooling'),
        head=dict(type='mmpretrain.LinearClsHead', num_classes=10,
                  in_channels=64,
                  loss=dict(type='mmpretrain.CrossEntropyLoss'))))
    gm = trace_model(model)
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(gm(x), model(x, mode='tensor'))
    names = {n.target for n in gm.graph.nodes if n.op == 'call_module'}
    assert 'head.fc' in names and 'backbone.conv1' in names


# --- spaces -------------------------------------------------------------------
def test_residual_branches_share_one_space_torchvision():
    g = ChannelGraph(torchvision.models.resnet18(), torch.randn(1, 3, 64, 64))
    s = space_of(g, 'layer2.0.downsample.0')
    assert space_of(g, 'layer2.0.conv2') == s
    assert space_of(g, 'layer2.1.conv2') == s
    assert space_of(g, 'layer2.1.conv1', 'in') == s
    assert space_of(g, 'layer3.0.conv1', 'in') == s
    assert space_of(g, 'layer3.0.downsample.0', 'in') == s
    # inner widths of a block are independent spaces
    assert space_of(g, 'layer2.0.conv1') != s
    # the stem conv feeds layer1's residual stream
    assert space_of(g, 'conv1') == space_of(g, 'layer1.1.conv2')
    # classifier outputs are never pruned, its inputs are
    assert g.channel_map('fc', 'out') == []
    assert space_of(g, 'fc', 'in') == space_of(g, 'layer4.1.conv2')


def test_residual_shared_space_resnet20():
    g = ChannelGraph(CifarResNet(20), torch.randn(1, 3, 32, 32))
    stem = space_of(g, 'backbone.conv1')
    assert space_of(g, 'backbone.layer1.2.conv2') == stem
    s2 = space_of(g, 'backbone.layer2.0.downsample.0')
    assert space_of(g, 'backbone.layer2.0.conv2') == s2
    assert space_of(g, 'backbone.layer2.2.conv2') == s2
    assert s2 != stem
    assert len(g.spaces) == 3 + 9  # 3 residual streams + 9 block inners
    assert g.spaces[s2].num_channels == 32


class _Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.weird = _WeirdBlock()
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(self.weird(self.conv(x)))


class _WeirdBlock(nn.Module):
    def forward(self, x):
        return torch.logcumsumexp(x, dim=1)


def test_unsupported_op_raises_named_error_and_ignore_works():
    model, x = _Custom(), torch.randn(1, 3, 8, 8)
    with pytest.raises(UnsupportedOpError) as err:
        ChannelPruner(model, x)
    msg = str(err.value)
    assert 'logcumsumexp' in msg and 'logcumsumexp' in msg.split('node')[1]
    assert "'weird'" in msg and 'register_function_rule' in msg
    assert 'ignore_layers' in msg
    # ignoring the block: its channels are kept, nothing else breaks
    pruner = ChannelPruner(model, x, ignore_layers=['weird'])
    assert pruner.channel_spaces == {}


def test_unsupported_leaf_module_raises():
    model = _Custom()
    with pytest.raises(UnsupportedOpError, match='_WeirdBlock.*register_module_rule'):
        ChannelPruner(model, torch.randn(1, 3, 8, 8),
                      leaf_modules=(_WeirdBlock,))


def test_register_function_rule_extends_analysis():
    from mmrazor_ext.graph.rules import FUNCTION_RULES, opaque
    try:
        register_function_rule(torch.logcumsumexp)(opaque)
        pruner = ChannelPruner(_Custom(), torch.randn(1, 3, 8, 8))
        assert pruner.channel_spaces == {}  # mixing op: channels fixed
    finally:
        FUNCTION_RULES.pop(torch.logcumsumexp, None)


# --- specific op rules on small nets -----------------------------------------
class _CatSplitNet(nn.Module):
    """cat (offset mapping), chunk, channel shuffle, SE gating, flatten->fc."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(14)
        self.c = nn.Conv2d(14, 12, 1)
        self.se1 = nn.Conv2d(12, 4, 1)
        self.se2 = nn.Conv2d(4, 12, 1)
        self.d = nn.Conv2d(6, 6, 3, padding=1, groups=6)
        self.gn = nn.GroupNorm(3, 12)
        self.fc = nn.Linear(12 * 4 * 4, 5)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], 1)
        y = F.relu(self.bn(y))
        y = self.c(y)
        s = torch.sigmoid(self.se2(F.relu(self.se1(F.adaptive_avg_pool2d(y, 1)))))
        y = y * s
        y1, y2 = y.chunk(2, dim=1)
        y = torch.cat([y1, self.d(y2)], 1)
        n, c, h, w = y.size()
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        y = self.gn(y)
        y = F.interpolate(y, scale_factor=0.5)
        return self.fc(torch.flatten(y, 1))


def test_rules_cat_chunk_shuffle_se_flatten():
    torch.manual_seed(0)
    model = randomise(_CatSplitNet())
    x = torch.randn(2, 3, 8, 8)
    g = ChannelGraph(model, x)
    # cat: a and b keep separate spaces, bn maps into both
    assert space_of(g, 'a') != space_of(g, 'b')
    assert {s for s, _, _ in g.channel_map('bn')} == {'a', 'b'}
    # SE gate output is tied to the gated feature
    assert space_of(g, 'se2') == space_of(g, 'c')
    # depthwise conv ties in and out
    assert space_of(g, 'd') == space_of(g, 'd', 'in')
    for seed in range(5):
        prune_check(model, x, ratio=0.5, seed=seed)


class _TokenNet(nn.Module):
    """Channel-last path: permute, LayerNorm, Linear MLP, layer scale."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 2, stride=2)
        self.ln = nn.LayerNorm(16)
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 16)
        self.scale = nn.Parameter(torch.rand(16) + .5)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        x = self.stem(x).permute(0, 2, 3, 1)
        x = x + self.scale * self.fc2(F.gelu(self.fc1(self.ln(x))))
        return self.head(x.mean((1, 2)))


def test_layernorm_linear_layer_scale_export():
    torch.manual_seed(0)
    model = _TokenNet().eval()
    x = torch.randn(2, 3, 8, 8)
    g = ChannelGraph(model, x)
    assert space_of(g, 'stem') == space_of(g, 'fc2') == space_of(g, 'ln')
    assert ('scale', 'param') in g.spaces[space_of(g, 'stem')].members
    for seed in range(3):
        pruner, small = prune_check(model, x, seed=seed)
        assert small.scale.numel() == small.ln.normalized_shape[0] < 16
        # the sliced layer scale is counted by the estimate too
        assert pruner.estimate_params(pruner.subnet) == \
            sum(p.numel() for p in small.parameters())


class _LiteralView(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 16, 2)

    def forward(self, x):
        y = self.conv(x).view(x.size(0), 8 * 16)  # literal size: not prunable
        z = self.conv2(x)[:, :4]  # literal channel slice: not prunable
        return self.fc(y) + z.mean((1, 2, 3))[:, None]


def test_literal_sizes_fix_channels():
    model, x = _LiteralView().eval(), torch.randn(2, 3, 4, 4)
    pruner = ChannelPruner(model, x)
    assert pruner.channel_spaces == {}


def test_masked_mode_trainable_and_bn_stats_untouched():
    torch.manual_seed(0)
    model = randomise(CifarResNet(20))
    x = torch.randn(4, 3, 32, 32)
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    pruner = ChannelPruner(model, x[:1])
    for k, v in model.state_dict().items():  # building changes nothing
        assert torch.equal(v, stats[k]), k
    sub = pruner.sample_subnet_uniform(0.5, pruner.get_metric_local('l1'))
    pruner.set_subnet(sub)
    for k, v in model.state_dict().items():  # masking changes no state
        assert torch.equal(v, stats[k]), k
    assert set(model.state_dict()) == set(stats)  # masks not persistent
    model.train()
    model(x).sum().backward()
    conv = model.backbone.layer1[0].conv1
    space = pruner.channel_spaces[space_of(pruner.graph,
                                           'backbone.layer1.0.conv1')]
    dropped = ~space.out_mask
    assert dropped.any()
    assert conv.weight.grad[dropped].abs().sum() == 0
    assert conv.weight.grad[~dropped].abs().sum() > 0
    pruner.clear_subnet()
    model.eval()
    with torch.no_grad():
        dense = model(x)
    assert not any(h for m in model.modules()
                   for h in (m._forward_hooks, m._forward_pre_hooks))
    assert dense.shape == (4, 10)
