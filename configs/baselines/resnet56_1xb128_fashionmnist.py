_base_ = [
    '../_base_/models/resnet56_cifar.py',
    '../_base_/datasets/fashion_mnist_bs128.py',
    '../_base_/schedules/onecycle_3e.py',
    '../_base_/default_runtime.py',
]
# Fashion-MNIST images are grey: one input channel.
model = dict(backbone=dict(in_channels=1))
