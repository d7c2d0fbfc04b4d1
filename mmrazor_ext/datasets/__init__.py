from .offline import CIFAR10, DatasetNotFoundError, FashionMNIST, ImageNet

__all__ = ['CIFAR10', 'FashionMNIST', 'ImageNet', 'DatasetNotFoundError']
