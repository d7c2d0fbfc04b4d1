# Hybrid search on a CIFAR-10 ResNet-56 (see the ResNet-18 config).
_base_ = ['./hybrid_search_resnet18_1xb128_cifar10.py']

init_checkpoint = 'work_dirs/resnet56_1xb128_cifar10/epoch_200.pth'
model = dict(architecture=dict(backbone=dict(depth=56),
                               head=dict(in_channels=64)),
             init_checkpoint=init_checkpoint,
             pruner=dict(divisor=1))
