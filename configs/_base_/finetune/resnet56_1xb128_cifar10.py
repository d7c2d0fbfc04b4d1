# Compress a trained CIFAR-10 ResNet-56, then fine-tune it for 100 epochs
# (x0.1 at 50 and 75). An algorithm config replaces `model` by its algorithm
# around this architecture and `init_checkpoint`.
_base_ = ['../../baselines/resnet56_1xb128_cifar10.py']

init_checkpoint = 'work_dirs/resnet56_1xb128_cifar10/epoch_200.pth'

param_scheduler = dict(milestones=[50, 75])
train_cfg = dict(max_epochs=100)
