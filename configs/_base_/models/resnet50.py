# ResNet-50, ImageNet layout (mmpretrain's ResNet): ResNet-18 with
# Bottleneck stages, 2048 output channels.
_base_ = ['./resnet18.py']
model = dict(backbone=dict(depth=50), head=dict(in_channels=2048))
