# One-shot pruning of a trained ResNet-20 to 50 % of its FLOPs (one global
# threshold), then fine-tuning in masked mode; the pruned model is exported
# at the end. The {metric}_resnet20_1xb128_fashionmnist.py configs add the
# channel metric.
_base_ = ['../../_base_/finetune/resnet20_1xb128_fashionmnist.py']

model = dict(
    _delete_=True,
    type='OneShotPruning',
    architecture={{_base_.model}},
    input_shape=(1, 1, 28, 28),
    # sampling: 'global' | 'uniform' | 'sensitivity' (per-space keep ratios
    # from measured damage; options in sensitivity=dict(step=0.125,
    # bn_batches=5, eval_batches=5))
    target=dict(mode='flops', ratio=0.5, sampling='global'),
    init_checkpoint={{_base_.init_checkpoint}},
    bn_recalib_batches=20,
    # reconstruct=dict(method='least_squares', num_batches=20) refits the
    # consumers of pruned channels before fine-tuning (default: off)
)
custom_hooks = [dict(type='PruningHook')]
