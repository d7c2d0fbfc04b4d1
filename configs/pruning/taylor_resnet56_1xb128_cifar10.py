# taylor one-shot pruning of ResNet-56 on CIFAR-10 to 48 % of its FLOPs (the
# paper's -52 % setting), fine-tuned for 100 epochs.
_base_ = ['../baselines/resnet56_1xb128_cifar10.py']

init_checkpoint = 'work_dirs/resnet56_1xb128_cifar10/epoch_200.pth'

model = dict(
    _delete_=True,
    type='OneShotPruning',
    architecture={{_base_.model}},
    input_shape=(1, 3, 32, 32),
    metric='taylor',
    metric_batches=20,
    target=dict(mode='flops', ratio=0.48, sampling='global'),
    init_checkpoint=init_checkpoint,
)
custom_hooks = [dict(type='PruningHook')]
param_scheduler = dict(milestones=[50, 75])
train_cfg = dict(max_epochs=100)
