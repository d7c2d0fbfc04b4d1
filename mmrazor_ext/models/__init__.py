from . import compat  # noqa: F401  (register mmpretrain defaults)
from .backbones import CIFAR_DEPTHS, CifarResNet, ResNet_CIFAR
from .detectors import TorchvisionDetector

__all__ = ['CIFAR_DEPTHS', 'CifarResNet', 'ResNet_CIFAR', 'TorchvisionDetector']
