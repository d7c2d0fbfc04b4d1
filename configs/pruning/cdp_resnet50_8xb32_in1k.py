# CDP one-shot pruning of ResNet-50 to ~2 GFLOPs (49 % of 4.1 G MACs).
_base_ = ['../_base_/finetune/resnet50_8xb32_in1k.py']

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
    init_checkpoint={{_base_.init_checkpoint}},
)
custom_hooks = [dict(type='PruningHook')]
