"""Channel splits and slices (issue 16): unequal literal splits (MixNet's
``MixedConv2d``), a partial conv on a split (FasterNet's ``Partial_conv3``)
and a slice of a concatenation (GhostNet's ``GhostModule``) are pruned, and
the exported model equals the masked one."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers.models import randomise
from mmrazor_ext.estimators import get_model_complexity
from mmrazor_ext.graph import ExportError
from mmrazor_ext.pruners import ChannelPruner


def _prune(model, x, ratio=0.5):
    """Uniform L1 pruning; returns (pruner, exported, max abs diff / scale,
    max abs diff) with the masked output measured on a fresh input."""
    pruner = ChannelPruner(model, x)
    pruner.set_subnet(pruner.sample_subnet_uniform(
        ratio, pruner.get_metric_local('l1')))
    small = pruner.export()
    xt = torch.randn_like(x)
    with torch.no_grad():
        ref, out = model(xt), small(xt)
    diff = float((ref - out).abs().max())
    return pruner, small, diff / float(ref.abs().max()), diff


def _out_members(pruner):
    return {layer for sp in pruner.channel_spaces.values()
            for layer, role in sp.members if role == 'out'}


# -- synthetic patterns --------------------------------------------------------
class MixConv(nn.Module):
    """MixNet's MixedConv2d: unequal literal pieces, one conv each, cat."""

    def __init__(self, sizes=(5, 11)):
        super().__init__()
        self.pw = nn.Conv2d(3, sum(sizes), 1)
        self.bn = nn.BatchNorm2d(sum(sizes))
        self.splits = list(sizes)
        self.convs = nn.ModuleList(
            nn.Conv2d(c, c, 3 + 2 * i, padding=1 + i, groups=c)
            for i, c in enumerate(sizes))
        self.head = nn.Conv2d(sum(sizes), 8, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = F.relu(self.bn(self.pw(x)))
        xs = torch.split(x, self.splits, 1)
        x = torch.cat([c(xs[i]) for i, c in enumerate(self.convs)], 1)
        return self.fc(self.head(x).mean((2, 3)))


class LiteralMixConv(MixConv):
    """The same with sizes written in forward: nothing to rewrite, fixed."""

    def forward(self, x):
        x = F.relu(self.bn(self.pw(x)))
        xs = torch.split(x, [5, 11], 1)
        x = torch.cat([c(xs[i]) for i, c in enumerate(self.convs)], 1)
        return self.fc(self.head(x).mean((2, 3)))


class PConv(nn.Module):
    """FasterNet's Partial_conv3: its forward (split_cat or slicing) is
    chosen in __init__, as timm does."""

    def __init__(self, dim, slicing=False):
        super().__init__()
        self.dim_conv3 = dim // 4
        self.dim_untouched = dim - self.dim_conv3
        self.partial_conv3 = nn.Conv2d(self.dim_conv3, self.dim_conv3, 3,
                                       padding=1, bias=False)
        self.forward = self.forward_slicing if slicing else \
            self.forward_split_cat

    def forward_split_cat(self, x):
        x1, x2 = torch.split(x, [self.dim_conv3, self.dim_untouched], dim=1)
        return torch.cat((self.partial_conv3(x1), x2), 1)

    def forward_slicing(self, x):
        x = x.clone()
        x[:, :self.dim_conv3] = self.partial_conv3(x[:, :self.dim_conv3])
        return x


class PartialConv(nn.Module):
    """A FasterNet block: partial conv, then a residual MLP."""

    def __init__(self, dim=16, slicing=False):
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 3, padding=1)
        self.mix = PConv(dim, slicing)
        self.mlp = nn.Sequential(nn.Conv2d(dim, 2 * dim, 1),
                                 nn.BatchNorm2d(2 * dim), nn.ReLU(),
                                 nn.Conv2d(2 * dim, dim, 1))
        self.fc = nn.Linear(dim, 4)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.mlp(self.mix(x))
        return self.fc(x.mean((2, 3)))


class GhostSlice(nn.Module):
    """GhostNet's GhostModule: cat of a conv and its depthwise cheap op,
    then a literal slice of the concatenation."""

    def __init__(self, init=8, out_chs=16):
        super().__init__()
        self.out_chs = out_chs
        self.primary = nn.Sequential(nn.Conv2d(3, init, 1),
                                     nn.BatchNorm2d(init), nn.ReLU())
        self.cheap = nn.Sequential(nn.Conv2d(init, init, 3, padding=1,
                                             groups=init),
                                   nn.BatchNorm2d(init), nn.ReLU())
        self.head = nn.Conv2d(out_chs, 8, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x1 = self.primary(x)
        out = torch.cat([x1, self.cheap(x1)], dim=1)[:, :self.out_chs]
        return self.fc(self.head(out).mean((2, 3)))


class OpenSlice(nn.Module):
    """``x[:, a:]``: channels before ``a`` stay, the rest is prunable."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.head = nn.Conv2d(12, 8, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.head(self.conv(x)[:, 4:]).mean((2, 3)))


def test_unequal_split_prunes_each_piece_and_rewrites_sizes():
    torch.manual_seed(0)
    model = randomise(MixConv())
    x = torch.randn(1, 3, 12, 12)
    pruner, small, rel, _ = _prune(model, x)
    assert 'pw' in _out_members(pruner)
    assert rel <= 1e-4
    # every piece keeps its own kept channels (one at least), the sizes
    # attribute follows and the depthwise convs match it
    assert small.splits == [c.in_channels for c in small.convs]
    assert sum(small.splits) == small.pw.out_channels < 16
    assert all(n >= 1 for n in small.splits)
    assert model.splits == [5, 11]  # the original is untouched


def test_unequal_split_extreme_ratio_keeps_every_piece():
    torch.manual_seed(1)
    model = randomise(MixConv((2, 3, 11)))
    x = torch.randn(1, 3, 10, 10)
    _, small, rel, _ = _prune(model, x, ratio=0.05)
    assert rel <= 1e-4
    assert all(n >= 1 for n in small.splits)


class Mix(nn.Module):
    """MixedConv2d alone: split by ``self.splits``, depthwise convs, cat."""

    def __init__(self, splits=(5, 11)):
        super().__init__()
        self.splits = list(splits)
        self.convs = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1, groups=c)
                                   for c in splits)

    def forward(self, x):
        xs = torch.split(x, self.splits, 1)
        return torch.cat([c(xs[i]) for i, c in enumerate(self.convs)], 1)


class SharedMix(nn.Module):
    """One Mix module called on two tensors: one set of sizes for both."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 16, 1), nn.Conv2d(3, 16, 1)
        self.mix = Mix()
        self.head = nn.Conv2d(32, 8, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = torch.cat([self.mix(self.a(x)), self.mix(self.b(x))], 1)
        return self.fc(self.head(y).mean((2, 3)))


def test_split_sizes_shared_by_two_calls():
    torch.manual_seed(0)
    model = randomise(SharedMix())
    x = torch.randn(1, 3, 8, 8)
    pruner, small, rel, _ = _prune(model, x)
    assert rel <= 1e-4
    # the two inputs are tied (one split), each piece keeps >= 1 channel
    assert {'a', 'b'} <= _out_members(pruner)
    assert small.a.out_channels == small.b.out_channels == \
        sum(small.mix.splits) < 16


def test_split_sizes_not_from_attributes_stay_fixed():
    torch.manual_seed(0)
    model = randomise(LiteralMixConv())
    x = torch.randn(1, 3, 12, 12)
    pruner, small, rel, _ = _prune(model, x)
    assert 'pw' not in _out_members(pruner)
    assert rel <= 1e-4 and small.pw.out_channels == 16


def test_partial_conv_on_a_split():
    torch.manual_seed(0)
    model = randomise(PartialConv())
    x = torch.randn(1, 3, 10, 10)
    pruner, small, rel, _ = _prune(model, x)
    assert rel <= 1e-4
    # the forward chosen in __init__ runs on the exported copy (it ran on
    # the unsliced original before: timm fasternet_t0 failed at run time)
    assert small.mix.forward.__self__ is small.mix
    # int attributes rewritten: the block width prunes, the conv's piece too
    assert {'stem', 'mix.partial_conv3'} <= _out_members(pruner)
    pconv = small.mix
    assert pconv.dim_conv3 == pconv.partial_conv3.in_channels
    assert pconv.dim_conv3 + pconv.dim_untouched == \
        small.stem.out_channels < 16
    assert model.mix.dim_conv3 == 4  # the original is untouched


def test_partial_conv_slicing_forward_pins_what_it_writes():
    """In-place slice assignment (torch.fx cannot trace it symbolically;
    traced with the example input): a write into part of the channel dim is
    opaque, so the tensor it writes keeps its channels, the MLP inside is
    still pruned and the export is exact."""
    from mmrazor_ext.graph import TraceError
    from mmrazor_ext.graph.tracer import trace_model
    torch.manual_seed(0)
    model = randomise(PartialConv(slicing=True)).eval()
    x = torch.randn(1, 3, 10, 10)
    with pytest.raises(TraceError, match='item assignment'):
        trace_model(model)
    pruner, small, rel, _ = _prune(model, x)
    assert rel <= 1e-4
    assert small.stem.out_channels == 16  # written in place: kept
    assert small.mix.partial_conv3.in_channels == 4
    assert small.mlp[0].out_channels < 32  # the hidden width is pruned


def test_slice_of_a_cat_is_pruned():
    torch.manual_seed(0)
    model = randomise(GhostSlice())
    x = torch.randn(1, 3, 10, 10)
    pruner, small, rel, _ = _prune(model, x)
    assert 'primary.0' in _out_members(pruner)
    assert rel <= 1e-4
    assert small.head.in_channels == 2 * small.primary[0].out_channels < 16


def test_slice_inside_the_dim_stays_fixed():
    """``out[:, :12]`` of 16 channels: positions are literal, nothing of
    the concatenation is pruned, export still exact."""
    torch.manual_seed(0)
    model = randomise(GhostSlice(out_chs=12))
    x = torch.randn(1, 3, 10, 10)
    pruner, small, rel, _ = _prune(model, x)
    assert not {'primary.0', 'cheap.0'} & _out_members(pruner)
    assert rel <= 1e-4 and small.head.in_channels == 12


def test_open_slice_prunes_past_its_start():
    torch.manual_seed(0)
    model = randomise(OpenSlice())
    x = torch.randn(1, 3, 8, 8)
    pruner, small, rel, _ = _prune(model, x)
    (space,) = [sp for sp in pruner.channel_spaces.values()
                if ('conv', 'out') in sp.members]
    assert space.num_channels == 12  # the first 4 are fixed
    assert rel <= 1e-4
    assert small.conv.out_channels == 4 + small.head.in_channels < 16


def test_exported_model_failing_to_run_is_an_export_error():
    """A run-time failure of the exported copy is reported as ExportError
    (not a bare RuntimeError from deep inside the model)."""
    from mmrazor_ext.graph import check_equivalence
    bad = nn.Conv2d(3, 4, 1)
    with pytest.raises(ExportError, match='fails to run'):
        check_equivalence(nn.Conv2d(4, 4, 1), bad, (torch.randn(1, 4, 4, 4),))


# -- timm models -----------------------------------------------------------------
timm_cases = ['fasternet_t0', 'mixnet_s', 'ghostnet_050']


@pytest.mark.slow
@pytest.mark.parametrize('name', timm_cases)
def test_timm_split_models_prune_and_export(name):
    timm = pytest.importorskip('timm')
    torch.manual_seed(0)
    model = randomise(timm.create_model(name, pretrained=False,
                                        num_classes=10))
    x = torch.randn(1, 3, 64, 64)
    pruner, small, rel, _ = _prune(model, x)
    assert rel <= 1e-4, (name, rel)
    ratio = get_model_complexity(small, x)['flops'] / \
        get_model_complexity(model, x)['flops']
    assert ratio <= 0.75, (name, ratio)
