# AutoSlim, step 1: slimmable training of ResNet-20 on Fashion-MNIST with the
# sandwich rule (largest, smallest = 35 % of every channel space, 2 random
# per-space widths per step; in-place distillation from the largest).
# Validation measures the full width. Then run
# autoslim_search_resnet20_1xb128_fashionmnist.py on the last checkpoint.
_base_ = ['../baselines/resnet20_1xb128_fashionmnist.py']

model = dict(
    _delete_=True,
    type='AutoSlim',
    architecture={{_base_.model}},
    input_shape=(1, 1, 28, 28),
    min_ratio=0.35,
    num_random=2,
    width_step=0.05,
    random_mode='space',
    temperature=1.0,
    distill_weight=1.0,
    bn_stats='largest',
    # Trained weights to start from (e.g. the baseline), or None: scratch.
    init_checkpoint=None,
)
# One optimizer step per batch covers four widths: a step costs about 4x a
# dense one. Same 3-epoch one-cycle schedule as the baseline.
# Used when launched on several processes (tools/dist_train.sh).
# (scoped name: the Runner looks the wrapper type up before building it)
model_wrapper_cfg = dict(type='mmrazor_ext.AutoSlimDDP')
