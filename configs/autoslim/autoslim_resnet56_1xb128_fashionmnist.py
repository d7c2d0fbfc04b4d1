# AutoSlim slimmable training of ResNet-56 on Fashion-MNIST (sandwich rule,
# in-place distillation). Search with AutoSlimSearchLoop as in
# autoslim_search_resnet20_1xb128_fashionmnist.py.
_base_ = ['../baselines/resnet56_1xb128_fashionmnist.py']

model = dict(
    _delete_=True,
    type='AutoSlim',
    architecture={{_base_.model}},
    input_shape=(1, 1, 28, 28),
    min_ratio=0.35,
    num_random=2,
    width_step=0.05,
    temperature=1.0,
    init_checkpoint=None,
)
# Used when launched on several processes (tools/dist_train.sh).
# (scoped name: the Runner looks the wrapper type up before building it)
model_wrapper_cfg = dict(type='mmrazor_ext.AutoSlimDDP')
