# CDP one-shot pruning of ResNet-50 to ~2 GFLOPs (49 % of 4.1 G MACs).
_base_ = ['../baselines/resnet50_8xb32_in1k.py']

init_checkpoint = 'work_dirs/resnet50_8xb32_in1k/epoch_100.pth'

model = dict(
    _delete_=True,
    type='OneShotPruning',
    architecture={{_base_.model}},
    input_shape=(1, 3, 224, 224),
    metric=dict(type='cdp', coe=0.0),
    cdp_by='class',
    metric_batches=100,
    target=dict(mode='flops', ratio=0.49, sampling='global'),
    pruner=dict(divisor=8),
    init_checkpoint=init_checkpoint,
)
custom_hooks = [dict(type='PruningHook')]
param_scheduler = dict(milestones=[10, 20])
train_cfg = dict(max_epochs=30)
