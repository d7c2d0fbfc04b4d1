"""AMC / Knight-MC helpers: a ResNet-20 environment on Fashion-MNIST-sized
inputs (search/, apis/, tools/ tests) and the Knight ResNet-50 setting."""
import os

import torch
import torchvision
from torch import nn

from helpers import ROOT

TEMPLATES = os.path.join(ROOT, 'examples', 'kmc', 'config')
"""The Knight YAML templates of examples/kmc."""

SEED_LIST = ['layer1.0.conv2', 'layer1.0.conv3', 'layer1.1.conv2',
             'layer1.1.conv3']
"""The first ``network:`` entries of the seed's ResNet-50 pruning YAML."""


def amc_data(n=32, seed=0):
    """One batch of ``n`` random 1x28x28 images and labels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return x, y


def amc_val_fn(x, y):
    """A Knight ``val_fn`` on the batch ``x, y``: top-1 / top-5 (``ind1``,
    ``ind2``) and the loss."""
    @torch.no_grad()
    def val(model):
        model.eval()
        out = model(x)
        top5 = out.topk(5, 1).indices
        return {'ind1': 100.0 * float((top5[:, 0] == y).float().mean()),
                'ind2': 100.0 * float((top5 == y[:, None]).any(1).float()
                                      .mean()),
                'vloss': float(nn.functional.cross_entropy(out, y))}
    return val


def amc_resnet20(seed=0):
    """A seeded ResNet-20 (1-channel 28x28 inputs) in eval mode."""
    from mmrazor_ext.models import CifarResNet
    torch.manual_seed(seed)
    return CifarResNet(20, 10, 1).eval()


def amc_env(model=None, **kw):
    """An ``AMCEnv`` on ``model`` (default :func:`amc_resnet20`) with a
    constant ``val_fn`` unless one is given."""
    from mmrazor_ext.pruners import ChannelPruner
    from mmrazor_ext.search import AMCEnv
    model = model if model is not None else amc_resnet20()
    pruner = ChannelPruner(model, torch.randn(1, 1, 28, 28))
    kw.setdefault('val_fn', lambda m: {'ind1': 50.0, 'ind2': 80.0})
    return AMCEnv(pruner, **kw)


def kmc_resnet50():
    """torchvision's ResNet-50 with 10 classes, seeded, in eval mode."""
    torch.manual_seed(0)
    return torchvision.models.resnet50(num_classes=10).eval()


def kmc_val_fn():
    """A Knight ``val_fn`` on four random 3x32x32 images."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (4,), generator=g)

    @torch.no_grad()
    def val(model):
        model.eval()
        out = model(x)
        return {'ind1': 100.0 * float((out.argmax(1) == y).float().mean()),
                'ind2': 50.0}
    return val
