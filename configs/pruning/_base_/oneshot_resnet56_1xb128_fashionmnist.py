# One-shot pruning of a trained Fashion-MNIST ResNet-56 (as for ResNet-20).
_base_ = ['./oneshot_resnet20_1xb128_fashionmnist.py']

init_checkpoint = 'work_dirs/resnet56_1xb128_fashionmnist/epoch_3.pth'
model = dict(architecture=dict(backbone=dict(depth=56)),
             init_checkpoint=init_checkpoint)
