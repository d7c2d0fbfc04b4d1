# ResNet-56 in the CIFAR layout (3 stages of 16/32/64 channels).
_base_ = ['./resnet_cifar.py']
model = dict(backbone=dict(depth=56))
