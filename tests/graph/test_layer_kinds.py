"""The layer kind table: a new prunable layer type is one record.

The toy kind below lives only in this file. Registering it is all it takes
for tracing, channel analysis, masking, export, MACs / params counting and
estimates, weight metrics and saved subnets to handle the layer; no module
of the package is edited.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers.models import randomise
from mmrazor_ext.estimators import count_params, get_model_complexity
from mmrazor_ext.graph import (
    LAYER_KINDS,
    ChannelGraph,
    LayerKind,
    find_layer_kind,
    get_layer_kind,
    register_layer_kind,
    unregister_layer_kind,
)
from mmrazor_ext.graph.layer_kinds import weight_slicer
from mmrazor_ext.graph.rules import MODULE_RULES
from mmrazor_ext.graph.slots import channel_slots
from mmrazor_ext.pruners import ChannelPruner, load_subnet


class PointwiseConv(nn.Module):
    """A 1x1 convolution written from scratch: a type the project does not
    know (not a torch.nn class, so not even a tracer leaf by default)."""

    def __init__(self, cin, cout):
        super().__init__()
        self.cin, self.cout = cin, cout
        self.weight = nn.Parameter(torch.randn(cout, cin) / math.sqrt(cin))
        self.bias = nn.Parameter(torch.randn(cout) * 0.1)

    def forward(self, x):
        return torch.einsum('oc,nchw->nohw', self.weight, x) + \
            self.bias[:, None, None]


# -- the whole description of the new kind ------------------------------------
def _pointwise_rule(kind, ctx, m, args, kwargs, sargs, skwargs, out):
    in_slots = channel_slots(ctx.union, sargs[0], 1, m.cin)
    out_slots = ctx.union.new(m.cout)
    kind.add_member(ctx, in_slots, out_slots)
    return out_slots.reshape(1, -1, 1, 1)


POINTWISE = LayerKind(
    'pointwise', (PointwiseConv,), _pointwise_rule,
    export=weight_slicer(0, 1, 'cout', 'cin'), producer=True,
    macs=lambda m, args, kwargs, out: out.numel() * m.cin,
    fan_in_pruned=lambda m: True)
# ------------------------------------------------------------------------------


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.pw = PointwiseConv(8, 12)
        self.bn2 = nn.BatchNorm2d(12)
        self.head = nn.Linear(12, 5)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = F.relu(self.bn2(self.pw(x)))
        return self.head(x.mean((2, 3)))


@pytest.fixture
def pointwise_kind():
    register_layer_kind(POINTWISE)
    try:
        yield POINTWISE
    finally:
        unregister_layer_kind('pointwise')


def _space(pruner, layer):
    return [s for s in pruner.channel_spaces.values()
            if (layer, 'out') in s.members][0]


def test_unknown_type_is_opaque_without_its_kind():
    g = ChannelGraph(_Net().eval(), torch.randn(1, 3, 8, 8))
    assert 'pw' not in g.layers and 'pw.weight' in g.layers  # a free tensor
    assert find_layer_kind(PointwiseConv(2, 2)) is None


def test_registered_kind_prunes_exports_and_counts(pointwise_kind, tmp_path):
    torch.manual_seed(0)
    model = randomise(_Net())
    x = torch.randn(2, 3, 8, 8)
    pruner = ChannelPruner(model, x[:1])
    assert pruner.graph.layers['pw'].kind == 'pointwise'
    assert _space(pruner, 'pw').num_channels == 12
    assert ('pw', 'in') in _space(pruner, 'stem').members
    # weight metric reads the kind's filters; masked == exported model
    scores = pruner.get_metric_local('l1')
    subnet = pruner.sample_subnet_uniform(0.5, scores)
    pruner.set_subnet(subnet)
    small = pruner.export()
    assert pruner.last_export_report['ok']
    assert tuple(small.pw.weight.shape) == (6, 4)
    assert (small.pw.cout, small.pw.cin) == (6, 4)
    with torch.no_grad():
        assert torch.allclose(small(x), model(x), atol=1e-5)
    # MACs from the kind's formula; estimates equal the exported counts
    cx = get_model_complexity(small, x[:1], per_layer=True)
    assert cx['layers']['pw']['flops'] == 6 * 4 * 8 * 8
    assert pruner.estimate_flops(subnet) == cx['macs']
    assert pruner.estimate_params(subnet) == count_params(small)
    # a saved subnet rebuilds through the same table
    pruner.save_subnet(str(tmp_path / 'sub.json'))
    again = load_subnet(_Net(), str(tmp_path / 'sub.json')).eval()
    with torch.no_grad():
        assert torch.allclose(again(x), small(x), atol=1e-6)
    pruner.clear_subnet()


def test_unregister_restores_previous_behaviour(pointwise_kind):
    assert get_layer_kind('pointwise') is POINTWISE
    assert find_layer_kind(PointwiseConv(2, 2)) is POINTWISE
    unregister_layer_kind('pointwise')
    register_layer_kind(POINTWISE)  # re-registering replaces cleanly
    unregister_layer_kind('pointwise')
    assert 'pointwise' not in LAYER_KINDS
    assert PointwiseConv not in MODULE_RULES
    with pytest.raises(KeyError, match="'pointwise'.*register_layer_kind"):
        get_layer_kind('pointwise')
    register_layer_kind(POINTWISE)  # for the fixture's clean-up


def test_register_exporter_replaces_a_kinds_slicer():
    from mmrazor_ext.graph import register_exporter
    original = get_layer_kind('prelu')
    calls = []
    try:
        register_exporter('prelu')(
            lambda m, i, o: calls.append(o) or original.export(m, i, o))
        assert get_layer_kind('prelu').rule is original.rule
        model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.PReLU(4),
                              nn.Conv2d(4, 2, 1))
        pruner = ChannelPruner(model, torch.randn(1, 3, 4, 4))
        pruner.set_subnet(pruner.sample_subnet_uniform(0.5))
        assert pruner.export()[1].weight.numel() == 2 and len(calls) == 1
    finally:
        register_layer_kind(original)
    with pytest.raises(KeyError, match='no layer kind'):
        register_exporter('nope')(print)


@pytest.mark.parametrize('name', sorted(LAYER_KINDS))
def test_builtin_kinds_are_complete(name):
    kind = LAYER_KINDS[name]
    assert kind.types and callable(kind.rule) and callable(kind.export)
    for cls in kind.types:
        assert MODULE_RULES[cls].func is kind.rule  # rule registered
    assert kind.macs is None or callable(kind.macs)
