# One-shot pruning of a trained CIFAR-10 ResNet-56 to 48 % of its FLOPs (the
# CDP paper's -52 % setting), fine-tuned for 100 epochs.
_base_ = ['../../_base_/finetune/resnet56_1xb128_cifar10.py']

model = dict(
    _delete_=True,
    type='OneShotPruning',
    architecture={{_base_.model}},
    input_shape=(1, 3, 32, 32),
    target=dict(mode='flops', ratio=0.48, sampling='global'),
    init_checkpoint={{_base_.init_checkpoint}},
    # reconstruct=dict(method='least_squares', num_batches=20): refit
    # before fine-tuning (default: off)
)
custom_hooks = [dict(type='PruningHook')]
