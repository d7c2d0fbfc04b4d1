# STR (soft threshold reparameterization) on ResNet-20 / Fashion-MNIST, as
# MSBench runs it: BaseScheduler + STRMaskGenerator + STRFakeSparse. The
# per-layer thresholds are trained with the weights; weight decay on them
# raises the sparsity.
_base_ = ['../baselines/resnet20_1xb128_fashionmnist.py']

sparsity_config = dict(
    mask_generator=dict(type='STRMaskGenerator'),
    fake_sparse=dict(type='STRFakeSparse', kwargs=dict(sInit_value=-5)),
    scheduler=dict(type='BaseScheduler',
                   kwargs=dict(default_input_shape=[1, 1, 28, 28])),
)
custom_hooks = [dict(type='SparsityHook', sparsity_config=sparsity_config)]
