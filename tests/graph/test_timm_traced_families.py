"""timm families that need the example-input trace (Python branches on
sizes), computed reshape sizes, RMS / response norms, recurrent layers and
sin-cos grids: uniform 50 % L1 reaches <= 0.75 of the MACs and the export
equals the masked model (``prune_half`` checks it)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers.models import NormsNet, prune_half, randomise
from mmrazor_ext.utils import perturb_parameters

timm = pytest.importorskip('timm')

CASES = [
    # traced with the example input (size branches, int(), len(), setitem)
    ('convit_tiny', 32, {'img_size': 32}, True),
    ('hiera_tiny_224', 64, {'img_size': 64}, True),
    ('mvitv2_tiny', 64, {'img_size': 64}, True),
    ('nest_tiny', 32, {'img_size': 32}, True),
    # qkv reshaped with C // heads of the block input: the stream is kept
    ('swinv2_cr_tiny_224', 64, {'img_size': 64}, False),
    ('volo_d1_224', 64, {'img_size': 64}, False),
    # nn.LSTM token mixing (opaque), timm's sin-cos grid, GRN
    ('sequencer2d_s', 32, {}, False),
    ('vit_tiny_patch16_dinov3_qkvb', 32, {'img_size': 32}, False),
    ('convnextv2_atto', 32, {}, False),
]


@pytest.mark.slow
@pytest.mark.parametrize('name,size,kwargs,concrete', CASES,
                         ids=[c[0] for c in CASES])
def test_family_prunes_and_exports(name, size, kwargs, concrete):
    torch.manual_seed(0)
    # every parameter off its init: Hiera and Sequencer output exact zeros
    # at timm's init, which no wrong slice could change
    model = perturb_parameters(randomise(timm.create_model(
        name, pretrained=False, num_classes=10, **kwargs)))
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        assert model(x).std() > 1e-3
    pruner, small, ratio = prune_half(model, x)
    assert not pruner.last_export_report.get('vacuous')
    assert bool(pruner.graph.gm.meta.get('concrete_trace')) == concrete
    with torch.no_grad():
        assert small(x).shape == (1, 10)
    assert ratio <= 0.75, (name, ratio)


class HeadsBlock(nn.Module):
    """``qkv(x).view(B, N, 3, heads, C // heads)`` with ``C`` read from the
    block input (Swin-V2-CR, VOLO, Twins)."""

    def __init__(self, dim=16, heads=2):
        super().__init__()
        self.heads = heads
        self.stem = nn.Linear(8, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        x = self.stem(x)
        B, N, C = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.heads, C // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        a = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(a.transpose(1, 2).reshape(B, N, -1))
        x = x + self.fc2(self.fc1(x).relu())
        return self.head(x.mean(1))


def test_reshape_by_a_size_computed_from_another_tensor_pins_it():
    """Pruning ``x`` would change ``C // heads`` but not ``qkv``'s output
    (and the default attention scale ``1 / sqrt(C // heads)``), so ``x``'s
    channels are kept, named in the report; the hidden MLP width is still
    pruned."""
    torch.manual_seed(0)
    pruner, small, _ = prune_half(randomise(HeadsBlock()),
                                  torch.randn(2, 5, 8))
    assert small.stem.out_features == 16 and small.qkv.in_features == 16
    assert small.fc1.out_features < 64
    assert 'stem' not in pruner.channel_spaces
    reasons = {r.layer: r.reason for r in pruner.report(log=False)}
    assert reasons['stem'].startswith('group constraint'), reasons


def test_rms_norms_prune_with_statistics_over_kept_channels():
    """timm's RmsNorm2d / RmsNormAct2d / RmsNorm divide by the RMS over the
    channels: pruned, the masked model takes it over the kept channels (what
    the sliced layer computes), so the export is exact."""
    from timm.layers import RmsNorm, RmsNorm2d, RmsNormAct2d

    torch.manual_seed(0)
    model = randomise(NormsNet(RmsNormAct2d, RmsNorm2d, RmsNorm,
                               widths=(16, 32, 24)))
    pruner, small, ratio = prune_half(model, torch.randn(2, 3, 8, 8))
    assert {'c1', 'c2', 'fc'} <= set(pruner.channel_spaces)
    assert small.n1.normalized_shape == (small.c1.out_channels,)
    assert small.n1.weight.numel() == small.c1.out_channels < 16
    assert small.n3.weight.numel() == small.fc.out_features < 24
    # gradients reach the norm's weight through the masked output
    pruner.set_subnet(pruner.sample_subnet_uniform(
        0.5, pruner.get_metric_local('l1')))
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    assert model.n1.weight.grad is not None
    pruner.clear_subnet()


def test_lstm_keeps_its_channels_and_says_why():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 8)
            self.rnn = nn.LSTM(8, 8, batch_first=True)
            self.fc2 = nn.Linear(8, 16)
            self.head = nn.Linear(16, 3)

        def forward(self, x):
            x, _ = self.rnn(self.fc(x))
            return self.head(self.fc2(x).relu())

    torch.manual_seed(0)
    pruner, small, _ = prune_half(randomise(Net()), torch.randn(2, 4, 6))
    assert small.fc.out_features == 8 and small.fc2.out_features < 16
    pinned = {r.layer: r.reason for r in pruner.report(log=False)}
    assert 'LSTM' in pinned['fc']
