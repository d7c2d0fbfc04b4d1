"""More timm families (issue 16): SAME-padding pools (NASNet / PNASNet),
SKNet's selective-kernel attention and NFNet's weight-standardised convs.
Small synthetic modules built from the timm layers, plus the smallest
SKNet; exported == masked is checked by ``export()`` itself."""
import pytest
import torch
from torch import nn

from helpers.models import prune_half, randomise

timm = pytest.importorskip('timm')


class _SamePools(nn.Module):
    def __init__(self):
        super().__init__()
        from timm.layers import AvgPool2dSame
        from timm.layers.pool2d_same import MaxPool2dSame
        self.c1 = nn.Conv2d(3, 16, 3)
        self.p1 = MaxPool2dSame(3, stride=2)
        self.c2 = nn.Conv2d(16, 16, 3)
        self.p2 = AvgPool2dSame(3, stride=2, count_include_pad=False)
        self.c3 = nn.Conv2d(16, 16, 1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = self.p1(torch.relu(self.c1(x)))
        x = self.p2(torch.relu(self.c2(x)))
        x = torch.relu(self.c3(x))
        return self.fc(x.mean((2, 3)))


def test_same_padding_pools_are_per_channel_leaves():
    """timm's ``MaxPool2dSame`` / ``AvgPool2dSame`` pad from the input size
    (untraceable); as leaves they pass channels through like nn.MaxPool2d,
    so the convs around them prune and the pooled maps keep their size."""
    torch.manual_seed(0)
    model = randomise(_SamePools()).eval()
    x = torch.randn(2, 3, 19, 21)  # odd sizes: asymmetric SAME padding
    pruner, small, ratio = prune_half(model, x)
    assert small.c1.out_channels == 8 and small.c2.in_channels == 8
    assert small.c3.out_channels == 8 and small.fc.in_features == 8
    assert ratio < 0.5
    assert not any(r.layer.startswith(('c1', 'c2', 'c3'))
                   for r in pruner.report(log=False))


class _SelectiveKernelNet(nn.Module):
    def __init__(self, split_input=True):
        nn.Module.__init__(self)  # also as the base of a timm ResNet
        from timm.layers import SelectiveKernel
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.sk = SelectiveKernel(16, 16, rd_channels=8,
                                  split_input=split_input)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = self.stem(x)
        x = self.sk(x) + x
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize('split_input', [True, False])
def test_selective_kernel_prunes_channels_across_paths(split_input):
    """SKNet: channel c of every path, of the attention's ``fc_select``
    (one output per path) and the residual are one unit; the input split
    into path halves keeps equal halves."""
    from timm.models.resnet import ResNet

    class Net(_SelectiveKernelNet, ResNet):  # a timm ResNet: its view
        __init__ = _SelectiveKernelNet.__init__
        forward = _SelectiveKernelNet.forward

    torch.manual_seed(0)
    model = randomise(Net(split_input)).eval()
    x = torch.randn(2, 3, 12, 12)
    pruner, small, ratio = prune_half(model, x)
    sk = small.sk
    assert small.stem.out_channels == 8
    assert [p.conv.out_channels for p in sk.paths] == [8, 8]
    assert sk.attn.fc_reduce.in_channels == 8
    assert sk.attn.fc_select.out_channels == 16  # 2 paths x 8
    assert sk.attn.fc_reduce.out_channels == 8  # internal width kept
    if split_input:
        assert [p.conv.in_channels for p in sk.paths] == [4, 4]
    assert ratio < 0.5
    assert type(model.sk).__name__ == 'SelectiveKernel'  # model untouched


@pytest.mark.slow
def test_skresnet18_prunes():
    torch.manual_seed(0)
    model = randomise(timm.create_model('skresnet18', pretrained=False,
                                        num_classes=10)).eval()
    _, small, ratio = prune_half(model, torch.randn(1, 3, 32, 32))
    assert ratio <= 0.75


class _StdConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        from timm.layers import ScaledStdConv2d, StdConv2dSame
        self.c1 = ScaledStdConv2d(3, 16, 3)
        self.c2 = StdConv2dSame(16, 16, 3, stride=2)
        self.c3 = ScaledStdConv2d(16, 32, 3, groups=4)
        self.head = nn.Conv2d(32, 8, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.c2(torch.relu(self.c1(x))))
        x = torch.relu(self.head(torch.relu(self.c3(x))))
        return self.fc(x.mean((2, 3)))


def test_weight_standardised_conv_prunes_outputs_not_inputs():
    """NFNet's ``ScaledStdConv2d`` standardises each output channel's
    weight over all its inputs: a dense one's inputs stay whole (so its
    producer is pinned, with the reason), its outputs prune (the gain
    with them), a grouped one loses whole groups."""
    torch.manual_seed(0)
    model = randomise(_StdConvNet()).eval()
    with torch.no_grad():
        for m in (model.c1, model.c3):
            m.gain.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 13, 13)
    pruner, small, _ = prune_half(model, x)
    assert small.c1.out_channels == 16 and small.c2.in_channels == 16
    # c2 -> c3 (grouped, 4 groups): whole groups of c3 go with c2's
    # channels (each kept output keeps its whole fan-in)
    assert small.c2.out_channels == 8 and small.c3.in_channels == 8
    assert small.c3.out_channels == 16 and small.c3.groups == 2
    assert small.c3.gain.shape[0] == 16
    assert small.head.in_channels == 16 and small.head.out_channels == 4
    pinned = {r.layer: r.reason for r in pruner.report(log=False)}
    assert 'c1' in pinned and 'c2' in pinned['c1']
