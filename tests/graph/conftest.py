"""Fixtures shared by the graph tests: a randomised CIFAR ResNet-20 and
its residual blocks."""
import pytest
import torch

from helpers.models import randomise


@pytest.fixture(scope='module')
def resnet20():
    from mmrazor_ext.models import CifarResNet
    torch.manual_seed(0)
    return randomise(CifarResNet(20, 10, 1)).eval()


@pytest.fixture(scope='module')
def blocks20(resnet20):
    from mmrazor_ext.graph import find_blocks
    # its own generator: the test modules' inputs keep their values
    x = torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    return find_blocks(resnet20, x)
