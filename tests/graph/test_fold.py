"""Conv / linear + BN folding (graph/fold.py), alone and through the
pruner's export."""
import torch
from torch import nn

from helpers.models import randomise

X = torch.randn(1, 1, 28, 28)


def test_fold_resnet20_via_pruner_export(resnet20):
    from mmrazor_ext.graph import check_equivalence
    from mmrazor_ext.pruners import ChannelPruner
    pruner = ChannelPruner(resnet20, X)
    pruner.set_subnet(pruner.sample_subnet_uniform(0.25))
    try:
        fused = pruner.export(fuse_bn=True)  # raises if not within 1e-5
        assert pruner.last_export_report['rel_diff'] <= 1e-5
        assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
        x = torch.randn(4, 1, 28, 28)
        assert check_equivalence(resnet20, fused, (x,))['rel_diff'] <= 1e-5
    finally:
        pruner.clear_subnet()


def test_fold_mobilenetv2_depthwise():
    from mmpretrain.models import MobileNetV2

    from mmrazor_ext.graph import check_equivalence, fold_bn
    model = randomise(MobileNetV2(widen_factor=0.5))
    model.eval()
    dw = [m for m in model.modules() if isinstance(m, nn.Conv2d)
          and m.groups > 1 and m.groups == m.in_channels]
    assert dw  # really depthwise convolutions
    fused = fold_bn(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    rep = check_equivalence(model, fused, (torch.randn(2, 3, 32, 32),))
    assert rep['rel_diff'] <= 1e-5, rep


class _LinearBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, groups=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc1 = nn.Linear(8, 16)
        self.bn1 = nn.BatchNorm1d(16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x))).mean((2, 3))
        return self.fc2(torch.relu(self.bn1(self.fc1(x))))


def test_fold_linear_batchnorm1d():
    from mmrazor_ext.graph import check_equivalence, find_conv_bn_pairs, fold_bn
    from mmrazor_ext.pruners import ChannelPruner
    model = randomise(_LinearBN()).eval()
    x = torch.randn(5, 3, 9, 9)
    # Linear + BN needs the shape check: skipped without example inputs
    assert find_conv_bn_pairs(model) == [('conv', 'bn')]
    assert find_conv_bn_pairs(model, x) == [('conv', 'bn'), ('fc1', 'bn1')]
    fused = fold_bn(model, x)
    assert isinstance(fused.bn1, nn.Identity)
    assert check_equivalence(model, fused, (x,))['rel_diff'] <= 1e-5
    # and through the pruner's export (graph's conv_bn_pairs)
    pruner = ChannelPruner(model, torch.randn(1, 3, 9, 9))
    assert ('fc1', 'bn1') in pruner.graph.conv_bn_pairs
    pruner.set_subnet(pruner.sample_subnet_uniform(0.5))
    small = pruner.export(fuse_bn=True)
    pruner.clear_subnet()
    assert isinstance(small.bn1, nn.Identity) and small.fc1.out_features == 8


class _BNAct(nn.BatchNorm2d):
    """A BatchNorm subclass with its own forward (like timm's
    BatchNormAct2d): normalise, then an activation."""

    def forward(self, x):
        return torch.relu(super().forward(x))


def test_bn_subclass_with_own_forward_is_not_folded():
    from mmrazor_ext.graph import find_conv_bn_pairs, fold_bn
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), _BNAct(8), nn.Conv2d(8, 4, 1),
                          nn.BatchNorm2d(4)).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
    x = torch.randn(2, 3, 8, 8)
    # as a user leaf (tracing through BN's forward hits its control flow)
    leaf = dict(leaf_modules=(_BNAct,))
    assert find_conv_bn_pairs(model, x, **leaf) == [('2', '3')]
    folded = fold_bn(model, x, **leaf)
    assert isinstance(folded[1], _BNAct)
    assert torch.allclose(folded(x), model(x), atol=1e-5)
