# AutoSlim slimmable training of ResNet-50 on ImageNet (8 GPUs x 32). Widths
# are multiples of 8 channels; the DDP wrapper reduces the gradients of the
# four widths once per step. Anchor (Yu & Huang 2019): 75.6 % at 2 GFLOPs.
_base_ = ['../baselines/resnet50_8xb32_in1k.py']

model = dict(
    _delete_=True,
    type='AutoSlim',
    architecture={{_base_.model}},
    input_shape=(1, 3, 224, 224),
    min_keep_ratio=0.35,
    num_random=2,
    width_step=0.05,
    temperature=1.0,
    pruner=dict(divisor=8),
    init_checkpoint=None,
)
# (scoped name: the Runner looks the wrapper type up before building it)
model_wrapper_cfg = dict(type='mmrazor_ext.AutoSlimDDP')
