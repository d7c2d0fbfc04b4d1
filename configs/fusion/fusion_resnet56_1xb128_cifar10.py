# Layer pruning of a trained ResNet-56 on CIFAR-10 to <= 50 % of its FLOPs
# (CKA block scores), fine-tuned for 100 epochs.
_base_ = ['../baselines/resnet56_1xb128_cifar10.py']

init_checkpoint = 'work_dirs/resnet56_1xb128_cifar10/epoch_200.pth'

model = dict(
    _delete_=True,
    type='LayerFusion',
    architecture={{_base_.model}},
    input_shape=(1, 3, 32, 32),
    metric=dict(type='block_cka'), metric_batches=40,
    target=dict(mode='flops', ratio=0.5),
    removal_mode='identity',
    init_checkpoint=init_checkpoint,
    bn_recalib_batches=50,
)
custom_hooks = [dict(type='PruningHook')]
param_scheduler = dict(milestones=[50, 75])
train_cfg = dict(max_epochs=100)
