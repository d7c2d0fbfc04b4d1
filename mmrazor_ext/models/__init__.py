from . import compat  # noqa: F401  (register mmpretrain defaults)
from .backbones import CIFAR_DEPTHS, CifarResNet, ResNet_CIFAR

__all__ = ['CIFAR_DEPTHS', 'CifarResNet', 'ResNet_CIFAR']
