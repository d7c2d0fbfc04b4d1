# ResNet-50 (ImageNet stage layout, Bottlenecks, 2048 output channels) with
# the CIFAR 3x3 stem.
_base_ = ['./resnet_cifar.py']
model = dict(backbone=dict(depth=50), head=dict(in_channels=2048))
