# Layer pruning of ResNet-50 on ImageNet: remove the 4 Bottlenecks with the
# highest input/output CKA (the 4 downsampling blocks are never removed),
# fine-tune 30 epochs. Removed blocks' parameters stay in the optimizer
# without gradients, so DDP must allow unused parameters.
_base_ = ['../_base_/finetune/resnet50_8xb32_in1k.py']

model = dict(
    _delete_=True,
    type='LayerFusion',
    architecture={{_base_.model}},
    input_shape=(1, 3, 224, 224),
    metric=dict(type='block_cka'), metric_batches=100,
    target=dict(mode='num_blocks', num=4),
    removal_mode='identity',
    fuse_bn=False,
    init_checkpoint={{_base_.init_checkpoint}},
    bn_recalib_batches=100,
)
custom_hooks = [dict(type='PruningHook')]
model_wrapper_cfg = dict(type='MMDistributedDataParallel',
                         find_unused_parameters=True)
