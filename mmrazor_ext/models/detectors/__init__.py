from .torchvision_detector import TorchvisionDetector

__all__ = ['TorchvisionDetector']
