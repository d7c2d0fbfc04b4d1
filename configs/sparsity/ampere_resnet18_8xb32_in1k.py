# NVIDIA Ampere 2:4 sparsity (ASP behaviour) of ResNet-18 on ImageNet,
# fine-tuned from a dense model:
#   tools/train_sparse.sh configs/sparsity/ampere_resnet18_8xb32_in1k.py 8 \
#       --cfg-options load_from=PATH_TO_DENSE.pth
_base_ = ['../baselines/resnet18_8xb32_in1k.py']

sparsity_config = dict(
    scheduler=dict(
        type='AmpereScheduler',
        kwargs=dict(mask_calculator='m4n2_1d', allow_recompute_mask=False,
                    allow_permutation=False, verbosity=1)),
)
custom_hooks = [dict(type='SparsityHook', sparsity_config=sparsity_config)]
# A short fine-tune: the 2:4 model recovers within a few epochs.
train_cfg = dict(max_epochs=10)
param_scheduler = dict(type='CosineAnnealingLR', by_epoch=True, T_max=10)
optim_wrapper = dict(optimizer=dict(lr=0.01))
