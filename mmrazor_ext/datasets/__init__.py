from .coco_detection import CocoDetectionTV
from .formats import DatasetFormatError, load_cifar_pickle, read_idx
from .offline import CIFAR10, DatasetNotFoundError, FashionMNIST, ImageNet

__all__ = ['CIFAR10', 'CocoDetectionTV', 'DatasetFormatError',
           'DatasetNotFoundError', 'FashionMNIST', 'ImageNet',
           'load_cifar_pickle', 'read_idx']
