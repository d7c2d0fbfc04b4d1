"""The channel graph's structure is pinned: a build optimisation must give
the same spaces (names, members, sizes) and the same channel -> unit maps.

The digests were taken from the graph code before the build-speed work of
issue 16 (item 4); a change that regroups channels fails here. When a rule
change is *meant* to regroup, check the new grouping by hand (e.g. prune and
export) before updating a digest.
"""
import hashlib
import json

import pytest
import torch
import torchvision
from torch import nn

from mmrazor_ext.graph import ChannelGraph
from mmrazor_ext.models import CifarResNet


def describe(g: ChannelGraph) -> dict:
    """Everything grouping decides, in a deterministic (JSON) form."""
    return {
        'spaces': [[name, sp.num_channels, sp.unit_size,
                    [list(m) for m in sp.members]]
                   for name, sp in g.spaces.items()],
        'layers': [[name, rec.kind, rec.producer,
                    None if rec.in_index is None else rec.in_index.tolist(),
                    None if rec.out_index is None else rec.out_index.tolist()]
                   for name, rec in g.layers.items()]}


def digest(g: ChannelGraph) -> str:
    text = json.dumps(describe(g), separators=(',', ':'))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _tv(name, **kw):
    return torchvision.models.get_model(name, weights=None, **kw)


# model, input size, #spaces, #units, digest of describe()
CASES = {
    'cifar_resnet20': (lambda: CifarResNet(20), 32, 12, 448,
                       'bfc67aaf0ce7edf5'),
    'resnet18': (lambda: _tv('resnet18'), 96, 12, 2880, '3543e6d06ebff0bd'),
    'mobilenet_v2': (lambda: _tv('mobilenet_v2'), 96, 25, 9128,
                     'f178834cb9b2d8f6'),
    # concatenation (dense blocks) ...
    'densenet121': (lambda: _tv('densenet121'), 96, 120, 10240,
                    '0a1c3461d847d6ad'),
    # ... and inception branches plus a train-mode-only aux head
    'googlenet': (lambda: _tv('googlenet', aux_logits=True,
                              init_weights=False), 96, 61, 9584,
                  'b11d1517d7098c01'),
}


@pytest.mark.parametrize('name', list(CASES))
def test_space_structure_is_pinned(name):
    make, size, n_spaces, n_units, expected = CASES[name]
    torch.manual_seed(0)
    g = ChannelGraph(make().eval(), torch.randn(1, 3, size, size))
    assert len(g.spaces) == n_spaces
    assert g.num_units == n_units == sum(
        sp.num_channels for sp in g.spaces.values())
    assert digest(g) == expected, json.dumps(
        [s[:3] + [len(s[3])] for s in describe(g)['spaces']])


def test_resnet20_spaces_readable():
    """The same facts in words: one space per residual stage (stem, every
    block's second conv and the next blocks' inputs) plus one per block's
    inner width."""
    g = ChannelGraph(CifarResNet(20).eval(), torch.randn(1, 3, 32, 32))
    sizes = [sp.num_channels for sp in g.spaces.values()]
    assert sizes == [16] * 4 + [32] * 4 + [64] * 4
    stem = g.spaces['backbone.conv1']
    assert ('backbone.layer1.2.conv2', 'out') in stem.members
    assert ('backbone.layer2.0.conv1', 'in') in stem.members
    assert len(stem.members) == 13
    inner = g.spaces['backbone.layer1.0.conv1']
    assert inner.members == [('backbone.layer1.0.conv1', 'out'),
                             ('backbone.layer1.0.bn1', 'out'),
                             ('backbone.layer1.0.conv2', 'in')]


class _Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.gconv = nn.Conv2d(16, 32, 3, padding=1, groups=4)
        self.gn = nn.GroupNorm(4, 32)
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        x = self.gn(self.gconv(torch.relu(self.stem(x))))
        return self.head(x.mean((2, 3)))


def test_grouped_conv_units_are_whole_groups():
    """A grouped conv ties each group's inputs and outputs: the stem's 16
    channels and the grouped conv's 32 outputs form one space of 4 units
    (the first producer's channels per unit: 16 / 4)."""
    g = ChannelGraph(_Grouped().eval(), torch.randn(1, 3, 8, 8))
    assert list(g.spaces) == ['stem']
    sp = g.spaces['stem']
    assert (sp.num_channels, sp.unit_size) == (4, 4)
    assert sp.members == [('stem', 'out'), ('gconv', 'in'), ('gconv', 'out'),
                          ('gn', 'out'), ('head', 'in')]
