"""ResNet for CIFAR-sized inputs, in the CIFAR layout of He et al. (2016).

Depths 20/32/44/56/110/1202 use three stages of BasicBlocks with 16/32/64
channels and a 3x3/16 stem; depths 18-152 keep mmpretrain's four-stage layout
with the CIFAR stem (3x3 conv, no max-pool), so one class serves both.
"""
import torch
from mmpretrain.models.backbones.resnet import BasicBlock
from mmpretrain.models.backbones.resnet import ResNet as _MMPretrainResNet
from mmpretrain.models.backbones.resnet_cifar import (
    ResNet_CIFAR as _MMPretrainResNetCIFAR,
)
from torch import nn

from mmrazor_ext.registry import MODELS

CIFAR_DEPTHS = (20, 32, 44, 56, 110, 1202)


@MODELS.register_module()
class ResNet_CIFAR(_MMPretrainResNetCIFAR):  # noqa: N801 (OpenMMLab name)
    """ResNet backbone for 32x32 (or 28x28) images.

    Args:
        depth: One of 20, 32, 44, 56, 110, 1202 (CIFAR layout: 6n+2 layers,
            three stages) or 18, 34, 50, 101, 152 (ImageNet layout with a
            CIFAR stem).
        in_channels: Channels of the input image (1 for Fashion-MNIST).
        **kwargs: Any argument of mmpretrain's ``ResNet``; for CIFAR depths
            the stage layout defaults below apply unless given explicitly.
    """

    arch_settings = {
        **_MMPretrainResNet.arch_settings,
        **{d: (BasicBlock, ((d - 2) // 6,) * 3) for d in CIFAR_DEPTHS},
    }

    def __init__(self, depth: int, in_channels: int = 3, **kwargs):
        if depth not in self.arch_settings:
            raise KeyError(
                f'ResNet_CIFAR: invalid depth {depth}; choose one of '
                f'{sorted(self.arch_settings)}')
        if depth in CIFAR_DEPTHS:
            kwargs.setdefault('stem_channels', 16)
            kwargs.setdefault('base_channels', 16)
            kwargs.setdefault('num_stages', 3)
            kwargs.setdefault('strides', (1, 2, 2))
            kwargs.setdefault('dilations', (1, 1, 1))
            kwargs.setdefault('out_indices', (kwargs['num_stages'] - 1,))
        super().__init__(depth, in_channels=in_channels, **kwargs)


class CifarResNet(nn.Module):
    """A plain ``nn.Module`` classifier: ``ResNet_CIFAR`` + GAP + linear.

    Used by benchmarks and tests that need an ordinary PyTorch model with no
    mmengine data flow; ``load_state_dict`` accepts the ``backbone.`` /
    ``head.fc.`` keys an mmpretrain ``ImageClassifier`` of the same depth
    writes, so checkpoints trained by ``tools/train.py`` load directly.

    Args:
        depth: Network depth (see :class:`ResNet_CIFAR`).
        num_classes: Number of output classes.
        in_channels: Input image channels.
    """

    def __init__(self, depth: int = 20, num_classes: int = 10,
                 in_channels: int = 3):
        super().__init__()
        self.backbone = ResNet_CIFAR(depth, in_channels=in_channels)
        self._init_weights()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.backbone.feat_dim, num_classes)

    def _init_weights(self) -> None:
        # Same scheme as mmpretrain's init_cfg (Kaiming fan_out, BN = 1 and
        # zero-init of each block's last BN) without its per-tensor log.
        for m in self.backbone.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out',
                                        nonlinearity='relu')
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.backbone.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.norm2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.backbone(x)[-1]
        return self.fc(torch.flatten(self.pool(x), 1))

    def load_state_dict(self, state_dict, strict: bool = True, assign=False):
        renamed = {k.replace('head.fc.', 'fc.'): v for k, v in state_dict.items()
                   if not k.startswith('data_preprocessor.')}
        return super().load_state_dict(renamed, strict=strict, assign=assign)
