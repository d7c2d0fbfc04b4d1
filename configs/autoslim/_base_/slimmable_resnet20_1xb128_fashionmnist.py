# AutoSlim slimmable training of a Fashion-MNIST ResNet (sandwich rule:
# largest, smallest = 35 % of every channel space and 2 random widths per
# step, in-place distillation from the largest), 3 epochs of one-cycle SGD
# as the baseline. Validation measures the full width.
_base_ = ['../../baselines/resnet20_1xb128_fashionmnist.py']

model = dict(
    _delete_=True,
    type='AutoSlim',
    architecture={{_base_.model}},
    input_shape=(1, 1, 28, 28),
    min_keep_ratio=0.35,
    num_random=2,
    width_step=0.05,
    temperature=1.0,
    # Trained weights to start from (e.g. the baseline), or None: scratch.
    init_checkpoint=None,
)
# Used when launched on several processes (tools/dist_train.sh).
# (scoped name: the Runner looks the wrapper type up before building it)
model_wrapper_cfg = dict(type='mmrazor_ext.AutoSlimDDP')
