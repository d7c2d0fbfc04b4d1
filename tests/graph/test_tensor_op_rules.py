"""Rules of graph/tensor_op_rules.py on small modules (no timm needed):
``Tensor.unfold`` and im2col (``nn.Unfold`` / ``F.unfold``)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers.models import prune_half, randomise
from mmrazor_ext.pruners import ChannelPruner


class Im2Col(nn.Module):
    """conv -> im2col (channel-major: c * k * k + j) -> linear."""

    def __init__(self, functional=False):
        super().__init__()
        self.functional = functional
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.unf = nn.Unfold(2, stride=2)
        self.fc = nn.Linear(8 * 4, 6)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        y = F.unfold(y, (2, 2), stride=2, padding=1) if self.functional \
            else self.unf(y)
        return self.fc(y.transpose(1, 2)).mean(1)


class Blocked(nn.Module):
    """HaloNet-style blocking with ``Tensor.unfold`` on spatial dims."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 6)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        y = y.unfold(2, 2, 2).unfold(3, 2, 2)  # (N, C, 4, 4, 2, 2)
        return self.fc(y.mean((2, 3, 4, 5)))


@pytest.mark.parametrize('make', [lambda: Im2Col(), lambda: Im2Col(True),
                                  Blocked], ids=['module', 'functional',
                                                 'tensor_unfold'])
def test_unfold_follows_pruned_channels(make):
    torch.manual_seed(0)
    model = randomise(make()).eval()
    x = torch.randn(2, 3, 8, 8)
    pruner, small, ratio = prune_half(model, x)
    kept = int(pruner.subnet[next(iter(pruner.subnet))].sum())
    assert small.conv.out_channels == kept < 8
    # the consumer keeps exactly the im2col rows of the kept channels
    per = 4 if isinstance(model, Im2Col) else 1
    assert small.fc.in_features == kept * per
    with torch.no_grad():
        assert torch.allclose(model(x), small(x), atol=1e-5)
    assert ratio < 0.75


class SpatialMix(nn.Module):
    """Channels whose slots vary along space cannot be im2col'd per
    channel: the rule pins them instead of guessing."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.unf = nn.Unfold(2, stride=2)
        self.fc = nn.Linear(8 * 4, 6)

    def forward(self, x):
        y = self.conv(x)
        y = torch.cat([y[:, :, :2], y.flip(1)[:, :, 2:]], 2)
        return self.fc(self.unf(y).transpose(1, 2)).mean(1)


def test_unfold_of_channels_mixed_along_space_pins_them():
    pruner = ChannelPruner(SpatialMix().eval(), torch.randn(1, 3, 4, 4))
    assert 'conv' not in {n for sp in pruner.channel_spaces.values()
                          for n, _ in sp.members}
