# NVIDIA Ampere 2:4 sparsity (m4n2_1d, ASP behaviour) of a torchvision
# RetinaNet (ResNet-18 FPN) on COCO-format data, fine-tuned from the dense
# detector (seeds/001: retinanet-improve r18 40.7 -> 40.3 mAP at 12 epochs):
#   tools/train_sparse.sh configs/sparsity/ampere_retinanet-r18-fpn_1xb2_coco.py \
#       8 --cfg-options load_from=PATH_TO_DENSE_DETECTOR.pth
# The masks are computed once from the loaded weights (allow_recompute_mask
# False, as MSBench recommends) and re-applied after every optimizer step.
# Only the network (backbone + FPN + heads, the model's mode='tensor' path)
# is traced; a layer whose shape has no 2:4 layout (e.g. the 3-channel stem,
# the 9 * 81-channel classification logits) stays dense and is logged.
_base_ = [
    '../_base_/datasets/coco_detection_tv_bs2.py',
    '../_base_/default_runtime.py',
]

model = dict(type='TorchvisionDetector', arch='retinanet', backbone='resnet18',
             num_classes=80, min_size=800, max_size=1333)

train_cfg = dict(by_epoch=True, max_epochs=12)
optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=1e-4),
    clip_grad=dict(max_norm=35, norm_type=2))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', by_epoch=True, milestones=[8, 11], gamma=0.1),
]
default_hooks = dict(checkpoint=dict(interval=1, save_best=None))

sparsity_config = dict(
    scheduler=dict(
        type='AmpereScheduler',
        kwargs=dict(mask_calculator='m4n2_1d', allow_recompute_mask=False,
                    allow_permutation=False, verbosity=1)),
    leaf_module=['FrozenBatchNorm2d'],
)
custom_hooks = [dict(type='SparsityHook', sparsity_config=sparsity_config)]
