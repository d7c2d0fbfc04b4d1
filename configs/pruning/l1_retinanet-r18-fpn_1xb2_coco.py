# One-shot L1 channel pruning of a torchvision RetinaNet (ResNet-18 FPN) on
# COCO-format data to 50 % of the network's MACs (backbone + FPN + heads,
# the model's mode='tensor' path), then fine-tuning in masked mode; the
# physically pruned detector is exported at the end (work_dir/pruned/).
#
# Channel dependencies the detector shares are kept by the channel graph:
# all FPN lateral convs share one space (top-down adds), all FPN outputs,
# P6/P7 (LastLevelP6P7) and the inputs of both head towers share another
# (the head convs run on every level); cls_logits / bbox_reg keep their
# outputs. Start from a trained dense detector with init_checkpoint=...
# (a checkpoint of TorchvisionDetector, e.g. from
# configs/sparsity/amba_retinanet-r18-fpn_1xb2_coco.py without the hook).
_base_ = [
    '../_base_/datasets/coco_detection_tv_bs2.py',
    '../_base_/default_runtime.py',
]

detector = dict(type='TorchvisionDetector', arch='retinanet',
                backbone='resnet18', num_classes=80, min_size=800,
                max_size=1333)
model = dict(
    type='OneShotPruning',
    architecture=detector,
    # the traced tensor path runs on a resized, normalised batch; the MACs
    # ratio is (almost) independent of the size, tracing is faster small
    input_shape=(1, 3, 512, 512),
    metric='l1',
    target=dict(mode='flops', ratio=0.5, sampling='global'),
    init_checkpoint=None,
    # FrozenBatchNorm2d (torchvision's detection backbones) has no running
    # statistics to recalibrate
    bn_recalib_batches=0,
)
custom_hooks = [dict(type='PruningHook')]

train_cfg = dict(by_epoch=True, max_epochs=12)
optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=1e-4),
    clip_grad=dict(max_norm=35, norm_type=2))
param_scheduler = dict(type='CosineAnnealingLR', by_epoch=True,
                       convert_to_iter_based=True, T_max=12, begin=0,
                       end=12)
default_hooks = dict(checkpoint=dict(interval=1, save_best=None))
