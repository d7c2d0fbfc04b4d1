from .offline import CIFAR10, FashionMNIST, ImageNet, DatasetNotFoundError

__all__ = ['CIFAR10', 'FashionMNIST', 'ImageNet', 'DatasetNotFoundError']
