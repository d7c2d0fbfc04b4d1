from .coco_detection import CocoDetectionTV
from .offline import CIFAR10, DatasetNotFoundError, FashionMNIST, ImageNet

__all__ = ['CIFAR10', 'CocoDetectionTV', 'DatasetNotFoundError', 'FashionMNIST',
           'ImageNet']
