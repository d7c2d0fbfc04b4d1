"""Small models shared by several test folders."""
import torch
import torch.nn.functional as F
from torch import nn


def randomise(model, seed=0, eval_mode=True):
    """Non-trivial BN statistics and affine parameters, so that dropped
    channels, folding and block removal are tested on something other than
    identities (running mean around 0: a following ReLU acts on about half
    the entries); the model in eval mode unless ``eval_mode=False``."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(n, generator=gen) - 0.5)
    if eval_mode:
        model.eval()
    return model


def resnet20(seed=0):
    """ResNet-20 for 1-channel 28x28 images (Fashion-MNIST), seeded, in
    train mode."""
    from mmrazor_ext.models import CifarResNet
    torch.manual_seed(seed)
    return CifarResNet(20, num_classes=10, in_channels=1)


def resnet20_pruner(seed=0):
    """A ChannelPruner on an eval-mode :func:`resnet20` (28x28 inputs)."""
    from mmrazor_ext.pruners import ChannelPruner
    model = resnet20(seed).eval()
    return ChannelPruner(model, example_inputs=torch.randn(1, 1, 28, 28))


def prune_half(model, x, flops_of=None):
    """Uniform 50 % L1 on ``model`` (random init), set, exported and
    checked (``export()`` raises unless exported == masked).

    Returns:
        ``(pruner, exported model, MACs kept ratio)``; ``flops_of(model)``
        wraps a model before counting (default: itself).
    """
    from mmrazor_ext.estimators import get_model_complexity
    from mmrazor_ext.pruners import ChannelPruner
    pruner = ChannelPruner(model, x)
    assert pruner.channel_spaces, pruner.report(log=False)
    pruner.set_subnet(pruner.sample_subnet_uniform(
        0.5, pruner.get_metric_local('l1')))
    small = pruner.export()
    assert pruner.last_export_report['ok']
    wrap = flops_of or (lambda m: m)
    ratio = get_model_complexity(wrap(small), x)['flops'] / \
        get_model_complexity(wrap(model), x)['flops']
    return pruner, small, ratio


class WideNet(nn.Module):
    """Channels large enough for 32x64 tiles and 2:4 on every conv."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 128, 3, padding=1, stride=2)
        self.bn2 = nn.BatchNorm2d(128)
        self.conv3 = nn.Conv2d(128, 128, 1)
        self.big = nn.Conv2d(128, 128, 9, padding=4)  # kernel > 8
        self.fc = nn.Linear(128, 64)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.big(self.conv3(x))
        return self.fc(x.mean((2, 3)))


def check_scores(pruner, scores):
    """One finite importance score per channel of every space."""
    assert set(scores) == set(pruner.channel_spaces)
    for name, space in pruner.channel_spaces.items():
        s = scores[name]
        assert s.shape == (space.num_channels,), name
        assert torch.isfinite(s).all(), name


class NormsNet(nn.Module):
    """conv -> ``norm_a`` -> conv -> ``norm_b`` -> mean -> linear ->
    ``norm_last`` -> head: three norm classes under test (two over dim 1,
    one over the last dim) at widths ``widths``."""

    def __init__(self, norm_a, norm_b, norm_last, widths=(16, 16, 16)):
        super().__init__()
        a, b, c = widths
        self.c1 = nn.Conv2d(3, a, 1)
        self.n1 = norm_a(a)
        self.c2 = nn.Conv2d(a, b, 1)
        self.n2 = norm_b(b)
        self.fc = nn.Linear(b, c)
        self.n3 = norm_last(c)
        self.head = nn.Linear(c, 4)

    def forward(self, x):
        x = self.n2(self.c2(self.n1(self.c1(x))))
        return self.head(self.n3(self.fc(x.mean((2, 3)))))
