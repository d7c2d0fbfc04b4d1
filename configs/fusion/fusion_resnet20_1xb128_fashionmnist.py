# Layer pruning of a trained ResNet-20: remove the 2 residual blocks whose
# output is most similar to their input (linear CKA), recalibrate BN,
# fine-tune 1 epoch and export (small config, used by the tests).
_base_ = ['../_base_/finetune/resnet20_1xb128_fashionmnist.py']

model = dict(
    _delete_=True,
    type='LayerFusion',
    architecture={{_base_.model}},
    input_shape=(1, 1, 28, 28),
    metric=dict(type='block_cka'), metric_batches=20,
    target=dict(mode='num_blocks', num=2),
    removal_mode='identity',
    init_checkpoint={{_base_.init_checkpoint}},
    bn_recalib_batches=20,
)
custom_hooks = [dict(type='PruningHook')]
