# Layer pruning of a trained ResNet-56 on CIFAR-10 to <= 50 % of its FLOPs
# (CKA block scores), fine-tuned for 100 epochs.
_base_ = ['../_base_/finetune/resnet56_1xb128_cifar10.py']

model = dict(
    _delete_=True,
    type='LayerFusion',
    architecture={{_base_.model}},
    input_shape=(1, 3, 32, 32),
    metric=dict(type='block_cka'), metric_batches=40,
    target=dict(mode='flops', ratio=0.5),
    removal_mode='identity',
    init_checkpoint={{_base_.init_checkpoint}},
    bn_recalib_batches=50,
)
custom_hooks = [dict(type='PruningHook')]
