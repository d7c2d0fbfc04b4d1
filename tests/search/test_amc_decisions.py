"""What a Knight ``network:`` list means for the AMC decisions: input
channels (the preceding filters) or output channels with whole
residual groups (search/amc_decisions.py)."""
import os

import pytest
import torch
from torch import nn

from helpers import ROOT
from helpers.amc import amc_env


def test_network_list_input_channels_and_errors():
    """Knight semantics: a listed layer's inputs, the preceding filters."""
    from mmrazor_ext.models import CifarResNet
    model = CifarResNet(20, 10, 1).eval()
    listed = [f'backbone.layer{s}.{b}.conv2' for s in (1, 2, 3)
              for b in range(3)]
    env = amc_env(model, layers=listed, target_density=0.5)
    assert [d.layer for d in env.decisions] == listed
    assert [d.space for d in env.decisions] == \
        [n.replace('conv2', 'conv1') for n in listed]
    assert {d.role for d in env.decisions} == {'in'}
    # a block's conv1 reads the residual stream: an error naming the group
    with pytest.raises(ValueError, match=r"'backbone.layer2.1.conv1'.*"
                       'backbone.layer2.0.downsample.0'):
        amc_env(model, layers=listed + ['backbone.layer2.1.conv1'])
    with pytest.raises(KeyError, match="network: layer 'backbone.nope'"):
        amc_env(model, layers=['backbone.nope'])
    with pytest.raises(ValueError, match='network input'):
        amc_env(model, layers=['backbone.conv1'])
    with pytest.raises(ValueError, match="'fc'.*residual add"):
        amc_env(model, layers=['fc'])
    # pruning only three small layers cannot reach 20 % of the MACs
    with pytest.raises(ValueError, match='amc_cfg.target_density'):
        amc_env(model, layers=listed[:3], target_density=0.2)


def test_concat_grouped_and_input_layers_are_errors():
    from mmrazor_ext.pruners import ChannelPruner
    from mmrazor_ext.search.amc_decisions import make_decisions

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1)
            self.b = nn.Conv2d(3, 8, 3, padding=1)
            self.c = nn.Conv2d(16, 16, 3, padding=1)
            self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
            self.d = nn.Conv2d(16, 8, 1)
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            x = self.c(torch.cat([self.a(x), self.b(x)], 1))
            x = self.d(self.dw(torch.relu(x)))
            return self.fc(x.mean((2, 3)))

    model = Net().eval()
    graph = ChannelPruner(model, torch.randn(1, 3, 8, 8)).graph
    with pytest.raises(ValueError, match=r"'c'.* several layers \(a, b"):
        make_decisions(graph, model, ['c'])
    with pytest.raises(ValueError, match=r"'d'.*filters of c, dw.*grouped"):
        make_decisions(graph, model, ['d'])
    with pytest.raises(ValueError, match="'a'.*network input"):
        make_decisions(graph, model, ['a'])
    [dec] = make_decisions(graph, model, ['fc'])
    assert (dec.space, dec.layer, dec.role) == ('d', 'fc', 'in')
    # the output option keeps the old meaning
    [dec] = make_decisions(graph, model, ['d'], channels='output')
    assert (dec.space, dec.layer, dec.role) == ('d', 'd', 'out')


def test_amc_resnet50_config_lists_knight_layers():
    """configs/amc's ResNet-50 ``network=`` (conv2 / conv3 of every
    bottleneck) is valid with the input meaning AMCPruning uses."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    from mmrazor_ext.pruners import ChannelPruner
    from mmrazor_ext.registry import MODELS
    from mmrazor_ext.search.amc_decisions import make_decisions
    init_default_scope('mmrazor_ext')
    cfg = Config.fromfile(os.path.join(
        ROOT, 'configs/amc/amc_resnet50_1xb128_cifar10.py'))
    arch = MODELS.build(cfg.model.architecture).eval()
    graph = ChannelPruner(arch, torch.randn(1, 3, 32, 32)).graph
    decisions = make_decisions(graph, arch, cfg.model.network)
    assert len(decisions) == 32
    assert [d.space for d in decisions[:2]] == [
        'backbone.layer1.0.conv1', 'backbone.layer1.0.conv2']


def _cifar_env(model, **kw):
    from mmrazor_ext.pruners import ChannelPruner
    from mmrazor_ext.search import AMCEnv
    pruner = ChannelPruner(model, torch.randn(1, 1, 28, 28))
    return AMCEnv(pruner, lambda m: {'ind1': 50.0, 'ind2': 80.0}, **kw)


def test_network_list_output_channels_residual_groups():
    """network_channels='output': filters of the listed layers; residual
    groups must be listed whole."""
    from mmrazor_ext.models import CifarResNet
    from mmrazor_ext.search.amc_decisions import NetworkList
    model = CifarResNet(20, 10, 1).eval()
    inner = [f'backbone.layer{s}.{b}.conv1' for s in (1, 2, 3)
             for b in range(3)]
    env = _cifar_env(model, layers=inner, target_density=0.5,
                     network_channels='output')
    assert [d.layer for d in env.decisions] == inner
    # one residual group listed completely: one decision for the group
    group = ['backbone.layer2.0.conv2', 'backbone.layer2.0.downsample.0',
             'backbone.layer2.1.conv2', 'backbone.layer2.2.conv2']
    env = _cifar_env(model, layers=NetworkList(inner + group, 'output'),
                     target_density=0.5)
    assert len(env.decisions) == len(inner) + 1
    env.reset()
    done = False
    while not done:
        _, _, done, info = env.step(0.5)
    assert info['subnet']['backbone.layer2.0.conv2'].sum() < 32
    # a group listed partly: the error names the layers left out (KMC note 2)
    with pytest.raises(ValueError, match='downsample'):
        _cifar_env(model, layers=inner + group[:1],
                   network_channels='output')
    with pytest.raises(ValueError, match='cannot be pruned'):
        _cifar_env(model, layers=['fc'], network_channels='output')
    with pytest.raises(ValueError, match='network_channels'):
        _cifar_env(model, layers=inner, network_channels='filters')
