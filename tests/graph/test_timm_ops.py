"""Channel rules for ops / layers that timm models use (issue 16): one small
synthetic module per rule, pruned with uniform 50 % L1; the exported model
must equal the masked one and the layer in question must be sliced."""
import pytest
import torch
from torch import nn

from helpers.models import NormsNet, randomise
from mmrazor_ext.pruners import ChannelPruner

timm = pytest.importorskip('timm')
from mmrazor_ext.graph.timm_rules import register_timm_rules  # noqa: E402

register_timm_rules()


def _prune(net, x):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    pruner = ChannelPruner(randomise(net), x)
    pruner.set_subnet(pruner.sample_subnet_uniform(
        0.5, pruner.get_metric_local('l1')))
    small = pruner.export()  # raises ExportError unless exported == masked
    assert pruner.last_export_report['ok']
    return pruner, small


class _Affine(nn.Module):
    """ResMLP's Affine (``addcmul(beta, alpha, x)``)."""

    def __init__(self, dim):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, x):
        return torch.addcmul(self.beta, self.alpha, x)


def test_addcmul_ties_per_channel_parameters_and_slices_them():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(6, 16)
            self.aff = _Affine(16)
            self.fc2 = nn.Linear(16, 3)

        def forward(self, x):
            return self.fc2(self.aff(self.fc1(x)).relu())

    pruner, small = _prune(Net(), torch.randn(2, 5, 6))
    assert set(pruner.channel_spaces) == {'fc1'}
    members = dict(pruner.channel_spaces['fc1'].members)
    assert members['aff.alpha'] == members['aff.beta'] == 'param'
    assert small.fc1.out_features == 8
    assert small.aff.alpha.shape == small.aff.beta.shape == (1, 1, 8)


def test_invert_of_a_mask_passes_through():
    """EdgeNeXt-style: an inverted boolean mask built from a shape feeds a
    positional encoding; the channels of the conv on it stay prunable."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 1)
            self.pos = nn.Conv2d(2, 8, 1)
            self.out = nn.Conv2d(8, 4, 1)

        def forward(self, x):
            b, _, h, w = x.shape
            keep = ~torch.zeros((b, h, w)).to(dtype=torch.bool)
            y = keep.cumsum(1, dtype=torch.float32)
            pos = self.pos(torch.stack((y, y.transpose(1, 2)), 1))
            return self.out(self.conv(x) + pos)

    pruner, small = _prune(Net(), torch.randn(1, 3, 5, 5))
    (space,) = pruner.channel_spaces.values()  # conv + pos, tied by the add
    assert {'conv', 'pos'} <= {layer for layer, _ in space.members}
    assert small.conv.out_channels == small.pos.out_channels == 4


def test_reshape_as_follows_pruning():
    """LeViT's LinearNorm: ``bn(x.flatten(0, 1)).reshape_as(x)``."""
    class LinearNorm(nn.Module):
        def __init__(self, i, o):
            super().__init__()
            self.linear = nn.Linear(i, o)
            self.bn = nn.BatchNorm1d(o)

        def forward(self, x):
            x = self.linear(x)
            return self.bn(x.flatten(0, 1)).reshape_as(x)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1 = LinearNorm(6, 16)
            self.ln2 = LinearNorm(16, 3)

        def forward(self, x):
            return self.ln2(self.ln1(x).relu())

    pruner, small = _prune(Net(), torch.randn(2, 5, 6))
    assert set(pruner.channel_spaces) == {'ln1.linear'}
    assert small.ln1.linear.out_features == 8
    assert small.ln1.bn.num_features == 8


def test_reshape_as_a_tensor_that_cannot_follow_pins():
    """``reshape_as`` a tensor whose channel dim is a literal shape: the
    result cannot shrink, so its channels are pinned."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(6, 16)
            self.fc2 = nn.Linear(16, 3)

        def forward(self, x):
            return self.fc2(self.fc1(x).reshape_as(x.new_zeros(1, 5, 16)))

    pruner = ChannelPruner(Net().eval(), torch.randn(1, 5, 6))
    assert not pruner.channel_spaces


@pytest.mark.parametrize('act', ['star_relu', 'learnable_affine'])
def test_scalar_parameter_activation_keeps_channels_free(act):
    """StarReLU / LearnableAffineBlock have one-element parameters: they
    must not tie all channels into one unit (a space that cannot shrink)."""
    from timm.models.hgnet import LearnableAffineBlock
    from timm.models.metaformer import StarReLU

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 16, 1)
            self.act = StarReLU() if act == 'star_relu' else \
                LearnableAffineBlock(1.5, 0.1)
            self.out = nn.Conv2d(16, 4, 1)

        def forward(self, x):
            return self.out(self.act(self.conv(x)))

    pruner, small = _prune(Net(), torch.randn(1, 3, 4, 4))
    assert pruner.channel_spaces['conv'].num_channels == 16
    assert small.conv.out_channels == 8


def test_metaformer_no_bias_norms_are_layer_kinds():
    """MetaFormer's ``*NoBias`` norm subclasses keep their base's forward:
    they get its layer kind (before: traced into an opaque layer_norm)."""
    from timm.models.metaformer import (
        GroupNorm1NoBias,
        LayerNorm2dNoBias,
        LayerNormNoBias,
    )

    pruner, small = _prune(NormsNet(LayerNorm2dNoBias, GroupNorm1NoBias,
                                    LayerNormNoBias), torch.randn(1, 3, 4, 4))
    assert set(pruner.channel_spaces) == {'c1', 'c2', 'fc'}
    assert small.n1.normalized_shape == (8,) and small.n1.bias is None
    assert small.n2.num_channels == 8 and small.n2.num_groups == 1
    assert small.n3.normalized_shape == (8,)


def test_torch_group_norm_with_one_group_prunes_channels():
    """``nn.GroupNorm(1, C)`` normalises over all channels: channels are
    free (not one unit) and the sliced layer normalises over the kept
    ones, as the masked one does."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 16, 3)
            self.gn = nn.GroupNorm(1, 16)
            self.gn4 = nn.GroupNorm(4, 16)
            self.out = nn.Conv2d(16, 4, 1)

        def forward(self, x):
            return self.out(self.gn4(self.gn(self.conv(x))))

    pruner, small = _prune(Net(), torch.randn(1, 3, 6, 6))
    assert small.gn.num_channels == 8 and small.gn.num_groups == 1
    # four groups of 4: whole groups go
    assert small.gn4.num_channels == 8 and small.gn4.num_groups == 2


def test_traceable_twins_compute_what_the_blocks_compute():
    """VGG's ConvMlp and MobileViT's block, on inputs that take their resize
    branches (smaller than the kernel / not a multiple of the patch): the
    view's twin gives the block's eager output, shares its parameters and
    traces."""
    from timm.models.mobilevit import MobileVitBlock
    from timm.models.vgg import ConvMlp

    from mmrazor_ext.graph import (
        register_traceable_view,
        trace_model,
        traceable_view,
    )
    from mmrazor_ext.graph.timm_views import timm_view

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = MobileVitBlock(8, 8, transformer_dim=16,
                                        transformer_depth=1, patch_size=2,
                                        num_heads=2)
            self.pre_logits = ConvMlp(8, 12, kernel_size=4)

        def forward(self, x):
            return self.pre_logits(self.block(x)).mean((2, 3))

    register_traceable_view(Net, timm_view)
    torch.manual_seed(0)
    net = Net().eval()
    x = torch.randn(1, 8, 3, 3)  # 3 x 3: odd for patch 2, below kernel 4
    view = traceable_view(net)
    assert view is not net and type(view.block) is not MobileVitBlock
    assert view.block.conv_1x1 is net.block.conv_1x1
    assert type(net.block) is MobileVitBlock  # the model is untouched
    with torch.no_grad():
        ref = net(x)
        assert torch.equal(view(x), ref)
        assert torch.allclose(trace_model(view)(x), ref)
