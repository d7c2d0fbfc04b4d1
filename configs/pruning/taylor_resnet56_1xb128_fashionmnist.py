# One-shot taylor pruning of a trained ResNet-56 to 50 % of its FLOPs, then
# fine-tuning in masked mode; the pruned model is exported at the end.
_base_ = ['../baselines/resnet56_1xb128_fashionmnist.py']

# Trained baseline (tools/train.py on the baseline config writes it).
init_checkpoint = 'work_dirs/resnet56_1xb128_fashionmnist/epoch_3.pth'

model = dict(
    _delete_=True,
    type='OneShotPruning',
    architecture={{_base_.model}},
    input_shape=(1, 1, 28, 28),
    metric='taylor', metric_batches=20,
    target=dict(mode='flops', ratio=0.5, sampling='global'),
    init_checkpoint=init_checkpoint,
    bn_recalib_batches=20,
)
custom_hooks = [dict(type='PruningHook')]

# Fine-tune: 1 epoch of one-cycle SGD at a lower peak LR.
max_epochs = 1
optim_wrapper = dict(optimizer=dict(lr=0.05))
param_scheduler = dict(eta_max=0.05, end=max_epochs)
train_cfg = dict(max_epochs=max_epochs)
