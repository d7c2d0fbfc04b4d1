# Layer pruning of a trained ResNet-56 on Fashion-MNIST to <= 50 % of its
# FLOPs: residual blocks are scored by 1 - linear CKA(input, output) and the
# weakest are replaced by identity (the two downsampling blocks are kept),
# then BN is recalibrated, the model fine-tuned 1 epoch and exported.
_base_ = ['../baselines/resnet56_1xb128_fashionmnist.py']

init_checkpoint = 'work_dirs/resnet56_1xb128_fashionmnist/epoch_3.pth'

model = dict(
    _delete_=True,
    type='LayerFusion',
    architecture={{_base_.model}},
    input_shape=(1, 1, 28, 28),
    metric=dict(type='block_cka'), metric_batches=20,
    target=dict(mode='flops', ratio=0.5),
    removal_mode='identity',
    # Depth then width in one run: see fusion_l1_resnet56_1xb128_fashionmnist.py
    # (channel_pruning=dict(metric=..., target=...)).
    fuse_bn=False,
    init_checkpoint=init_checkpoint,
    bn_recalib_batches=20,
)
custom_hooks = [dict(type='PruningHook')]

max_epochs = 1
optim_wrapper = dict(optimizer=dict(lr=0.05))
param_scheduler = dict(eta_max=0.05, end=max_epochs)
train_cfg = dict(max_epochs=max_epochs)
