"""Fixtures shared by the search tests."""
import pytest
import torch

from mmrazor_ext.models import CifarResNet
from mmrazor_ext.pruners import ChannelPruner


@pytest.fixture(scope='module')
def small_setup():
    """A ResNet-20 (1 input channel) and its pruner."""
    torch.manual_seed(0)
    model = CifarResNet(20, 10, 1).eval()
    pruner = ChannelPruner(model, torch.randn(1, 1, 28, 28))
    return model, pruner
