"""ChannelPruner ``divisor``: ``'auto'`` (the default) is per space, int
values round every space alike, bad values are named."""
import pytest
import torch
from torch import nn

from mmrazor_ext.models import CifarResNet
from mmrazor_ext.pruners import ChannelPruner
from mmrazor_ext.pruners.sampling import AUTO_DIVISOR_RULE, SubnetSampler


class _Space:
    """Minimal stand-in of a ChannelSpace for the sampler."""

    def __init__(self, n, unit_size=1):
        self.num_channels = n
        self.unit_size = unit_size


def _resnet20():
    torch.manual_seed(0)
    return CifarResNet(20).eval(), torch.randn(1, 3, 32, 32)


def test_default_is_auto_per_space():
    model, x = _resnet20()
    pruner = ChannelPruner(model, x)
    assert pruner.divisor == 'auto'
    widths = {n: s.num_channels for n, s in pruner.channel_spaces.items()}
    assert set(widths.values()) == {16, 32, 64}
    expect = {16: 1, 32: 8, 64: 16}
    for name, n in widths.items():
        assert pruner.divisor_of(name) == expect[n], name
    # every kept count is a multiple of its space's divisor
    scores = pruner.get_metric_local('l1')
    for ratio in (0.3, 0.5, 0.7):
        for sub in (pruner.sample_subnet_uniform(ratio, scores),
                    pruner.sample_subnet_diff(ratio, scores)):
            for name, m in sub.items():
                assert int(m.sum()) % expect[widths[name]] == 0, (ratio, name)
    sub = pruner.sample_subnet_for_flops(0.5, scores, verify=False)
    for name, m in sub.items():
        assert int(m.sum()) % expect[widths[name]] == 0, name


def test_auto_rule_values():
    s = SubnetSampler({}, 'auto')
    # 16 / 8 where the space keeps at least 4 multiples of it
    assert AUTO_DIVISOR_RULE == ((64, 16), (32, 8))
    for n, div in [(3, 1), (8, 1), (15, 1), (16, 1), (24, 1), (31, 1),
                   (32, 8), (48, 8), (63, 8), (64, 16), (2048, 16)]:
        assert s.divisor_of(_Space(n)) == div, n
    # a grouped space: width counts channels, the step counts units
    g = _Space(16, unit_size=4)   # 64 channels in groups of 4
    assert s.divisor_of(g) == 16 and s.step(g) == 4
    g = _Space(12, unit_size=4)   # 48 channels in groups of 4
    assert s.divisor_of(g) == 8 and s.step(g) == 2
    assert s.round_keep(_Space(32), 13) == 16
    assert s.round_keep(_Space(64), 45) == 48
    assert s.round_keep(_Space(16), 5) == 5
    assert s.round_keep(_Space(10), 7) == 7  # not rounded


@pytest.mark.parametrize('div', [1, 2, 4, 8, 16])
def test_int_divisor_unchanged(div):
    """An int divisor rounds every space alike, exactly as before 'auto'."""
    model, x = _resnet20()
    pruner = ChannelPruner(model, x, divisor=div)
    assert pruner.divisor == div
    scores = pruner.get_metric_local('l1')
    sub = pruner.sample_subnet_uniform(0.3, scores)
    for name, space in pruner.channel_spaces.items():
        assert pruner.divisor_of(name) == div
        n = space.num_channels
        keep = int(round(n * 0.7))
        if div > 1 and n >= div:
            keep = max(div, int(round(keep / div)) * div)
        assert int(sub[name].sum()) == min(keep, n), name
    # round_to is an alias
    assert ChannelPruner(model, x, round_to=div).divisor == div


def test_divisor_one_keeps_exact_counts():
    model, x = _resnet20()
    pruner = ChannelPruner(model, x, divisor=1)
    sub = pruner.sample_subnet_uniform(0.3)
    counts = {int(m.sum()) for m in sub.values()}
    assert counts == {11, 22, 45}   # round(0.7 * 16 / 32 / 64)


@pytest.mark.parametrize('bad', ['foo', 0, -3, 2.5, True, None])
def test_bad_divisor_named(bad):
    model, x = _resnet20()
    with pytest.raises(ValueError, match='divisor'):
        ChannelPruner(model, x, divisor=bad)
    with pytest.raises(ValueError, match='divisor'):
        SubnetSampler({}, bad)


def test_greedy_and_sensitivity_use_per_space_granule():
    from mmrazor_ext.search.greedy import GreedySlimmer
    from mmrazor_ext.search.sensitivity import SensitivityAllocator
    model, x = _resnet20()
    pruner = ChannelPruner(model, x)

    class _Eval:
        def evaluate(self, subnet):
            return {'top1': 0.0, 'loss': 0.0}
    greedy = GreedySlimmer(pruner, _Eval(), [0.5])
    alloc = SensitivityAllocator(pruner, _Eval(), progress=False)
    for name, space in pruner.channel_spaces.items():
        want = pruner.divisor_of(name)
        assert greedy._granule(name) == want
        assert alloc._granule(name) == want
        nxt = alloc._next(name, space.num_channels)
        assert nxt is not None and nxt % want == 0


def test_auto_on_a_narrow_net():
    """Spaces narrower than 32 channels are not rounded by the default."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 12, 3), nn.ReLU(),
                          nn.Conv2d(12, 40, 3), nn.ReLU(),
                          nn.Conv2d(40, 5, 1)).eval()
    pruner = ChannelPruner(model, torch.randn(1, 3, 16, 16))
    sub = pruner.sample_subnet_uniform(0.4)
    counts = sorted(int(m.sum()) for m in sub.values())
    assert counts == [7, 24]   # 12 * 0.6 = 7.2 -> 7; 40 * 0.6 = 24 (by 8)
