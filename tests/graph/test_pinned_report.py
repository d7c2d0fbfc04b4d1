"""No silent no-op: pinned channels are reported with their reason, an
unknown parameter-owning leaf module is a named error, and an algorithm
with nothing (enough) to prune fails naming the cause."""
import pytest
import torch
from mmengine.model import BaseModel
from torch import nn

from mmrazor_ext.graph import UnsupportedOpError
from mmrazor_ext.pruners import ChannelPruner, PinnedChannelsError


class _Net(nn.Module):
    """conv1 -> bn -> relu -> conv2 -> PixelShuffle -> conv3 -> cumsum ->
    conv4 -> pool -> fc."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)  # no channel model: opaque leaf
        self.conv3 = nn.Conv2d(4, 8, 3, padding=1)
        self.conv4 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv5 = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.conv2(torch.relu(self.bn1(self.conv1(x))))
        x = self.conv3(self.shuffle(x))
        x = torch.cumsum(x, 1)  # mixes channels: no rule, pins conv3
        x = self.conv5(torch.relu(self.conv4(x)))
        return self.fc(x.mean((2, 3)))


def _rows(pruner):
    return {r.layer: r for r in pruner.report(log=False)}


def test_report_names_each_reason():
    torch.manual_seed(0)
    pruner = ChannelPruner(_Net().eval(), torch.randn(1, 3, 8, 8),
                           ignore_layers=['conv4'])
    rows = _rows(pruner)
    # conv1 / bn1 are prunable; everything else is pinned, each for its cause
    assert 'conv1' not in rows and 'bn1' not in rows
    assert set(pruner.channel_spaces) == {'conv1', 'conv5'}
    assert rows['fc'].reason.startswith('output layer')
    assert rows['fc'].channels == 5 and rows['fc'].kind == 'linear'
    assert rows['conv2'].reason.startswith('leaf without rule')
    assert "'shuffle'" in rows['conv2'].reason
    assert 'PixelShuffle' in rows['conv2'].reason
    assert rows['conv3'].reason.startswith('group constraint')
    assert 'cumsum' in rows['conv3'].reason
    assert rows['conv4'].reason.startswith('ignored')
    assert all(r.space is None for r in rows.values())
    # cached, and logged as a table on request
    assert pruner.report(log=False) is pruner.report(log=False)


def test_report_of_a_fully_prunable_model_is_the_output_only():
    from mmrazor_ext.pruners import format_report
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 4))
    pruner = ChannelPruner(net, torch.randn(1, 3, 8, 8))
    rows = pruner.report(log=False)
    assert [r.layer for r in rows] == ['5']
    assert 'output layer' in format_report(rows)


class _Opaque(nn.Module):
    """A parameter-owning module the graph has no rule for."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)

    def forward(self, x):
        return self.conv(x)


class _Wrapped(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = _Opaque()
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(self.block(x).mean((2, 3)))


def test_unknown_leaf_module_is_a_named_error():
    with pytest.raises(UnsupportedOpError) as e:
        ChannelPruner(_Wrapped().eval(), torch.randn(1, 3, 8, 8),
                      leaf_modules=(_Opaque,))
    msg = str(e.value)
    assert "'block'" in msg and '_Opaque' in msg
    # listed in ignore_layers it is opaque, and the report says so
    pruner = ChannelPruner(_Wrapped().eval(), torch.randn(1, 3, 8, 8),
                           leaf_modules=(_Opaque,), ignore_layers=['block'])
    assert not pruner.channel_spaces
    assert _rows(pruner)['fc'].reason.startswith('output layer')


class _Pinned(BaseModel):
    """An mmengine model whose conv is pinned by an op without a rule;
    ``hidden`` > 0 adds a small prunable MLP (far too small for 50 %)."""

    def __init__(self, hidden=0):
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3)
        self.mlp = nn.Sequential(nn.Linear(16, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 10)) if hidden else \
            nn.Linear(16, 10)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        x = torch.cumsum(self.conv(inputs), 1)
        return self.mlp(x.mean((2, 3)))


def _algo(hidden, target):
    from mmrazor_ext.algorithms import OneShotPruning
    from mmrazor_ext.registry import register_all_modules
    register_all_modules()
    torch.manual_seed(0)
    return OneShotPruning(_Pinned(hidden), input_shape=(1, 1, 16, 16),
                          bn_recalib_batches=0, target=target)


def test_algorithm_with_nothing_prunable_fails_with_the_reason():
    algo = _algo(0, dict(mode='flops', ratio=0.5))
    with pytest.raises(PinnedChannelsError) as e:
        algo.prune([])
    msg = str(e.value)
    assert 'no prunable channel space' in msg
    assert 'cumsum' in msg and 'output layer' in msg
    assert algo.step == 0  # nothing was done


def test_algorithm_far_from_its_target_fails_with_the_reason():
    algo = _algo(8, dict(mode='flops', ratio=0.5))
    assert list(algo.pruner.channel_spaces) == ['mlp.0']
    with pytest.raises(PinnedChannelsError) as e:
        algo.prune([])
    msg = str(e.value)
    assert 'far from the target 0.500' in msg and 'cumsum' in msg
