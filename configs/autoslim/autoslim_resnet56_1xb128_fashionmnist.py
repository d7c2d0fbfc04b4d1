# AutoSlim slimmable training of ResNet-56 on Fashion-MNIST (sandwich rule,
# in-place distillation). Search with AutoSlimSearchLoop as in
# autoslim_search_resnet20_1xb128_fashionmnist.py.
_base_ = ['./_base_/slimmable_resnet20_1xb128_fashionmnist.py']

model = dict(architecture=dict(backbone=dict(depth=56)))
