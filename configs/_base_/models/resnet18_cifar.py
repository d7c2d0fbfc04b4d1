# ResNet-18 (ImageNet stage layout, 64..512 channels) with the CIFAR 3x3 stem.
_base_ = ['./resnet_cifar.py']
model = dict(backbone=dict(depth=18), head=dict(in_channels=512))
