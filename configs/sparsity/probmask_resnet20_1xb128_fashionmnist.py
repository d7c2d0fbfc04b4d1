# ProbMask on ResNet-20 / Fashion-MNIST: global keep-probability budget,
# temperature annealing, cubic sparsity ramp to 70 % over the first 75 % of
# training.
_base_ = ['../baselines/resnet20_1xb128_fashionmnist.py']

sparsity_config = dict(
    mask_generator=dict(type='ProbMaskGenerator'),
    fake_sparse=dict(type='ProbMaskFakeSparse'),
    scheduler=dict(
        type='ProbMaskScheduler',
        kwargs=dict(total_iters=None, target_sparsity=0.7, init_temp=1.0,
                    final_temp=0.05, ramp_start=0.0, ramp_end=0.75,
                    default_input_shape=[1, 1, 28, 28])),
)
custom_hooks = [dict(type='SparsityHook', sparsity_config=sparsity_config)]
