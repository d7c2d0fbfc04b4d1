# Hybrid search on a trained Fashion-MNIST ResNet-56 (see the ResNet-20
# config for the settings).
_base_ = ['./hybrid_search_resnet20_1xb128_fashionmnist.py']

init_checkpoint = 'work_dirs/resnet56_1xb128_fashionmnist/epoch_3.pth'
model = dict(architecture=dict(backbone=dict(depth=56)),
             init_checkpoint=init_checkpoint)
