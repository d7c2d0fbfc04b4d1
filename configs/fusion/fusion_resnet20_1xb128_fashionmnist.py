# Layer pruning of a trained ResNet-20: remove the 2 residual blocks whose
# output is most similar to their input (linear CKA), recalibrate BN,
# fine-tune 1 epoch and export (small config, used by the tests).
_base_ = ['../baselines/resnet20_1xb128_fashionmnist.py']

init_checkpoint = 'work_dirs/resnet20_1xb128_fashionmnist/epoch_3.pth'

model = dict(
    _delete_=True,
    type='LayerFusion',
    architecture={{_base_.model}},
    input_shape=(1, 1, 28, 28),
    metric=dict(type='block_cka'), metric_batches=20,
    target=dict(mode='num_blocks', num=2),
    removal_mode='identity',
    init_checkpoint=init_checkpoint,
    bn_recalib_batches=20,
)
custom_hooks = [dict(type='PruningHook')]

max_epochs = 1
optim_wrapper = dict(optimizer=dict(lr=0.05))
param_scheduler = dict(eta_max=0.05, end=max_epochs)
train_cfg = dict(max_epochs=max_epochs)
