from .backbones import CIFAR_DEPTHS, CifarResNet, ResNet_CIFAR

__all__ = ['CIFAR_DEPTHS', 'CifarResNet', 'ResNet_CIFAR']
