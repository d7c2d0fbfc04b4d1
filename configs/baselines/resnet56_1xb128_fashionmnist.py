# The ResNet-20 baseline at depth 56 (same data, schedule and runtime).
_base_ = ['./resnet20_1xb128_fashionmnist.py']
model = dict(backbone=dict(depth=56))
