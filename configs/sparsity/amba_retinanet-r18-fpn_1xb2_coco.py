# Amba level pruning of a torchvision RetinaNet (ResNet-18 FPN, random init
# or load_from a dense detector) on COCO-format data, through the same
# SparsityHook as the classifiers: only the network (backbone + FPN + heads,
# the model's mode='tensor' path) is traced and sparsified; anchors and
# post-processing are not. MSBench's retinanet-r18 used the same table.
#
# mmdet path (`make det` installs mmdet + compiled mmcv): take any mmdet
# config, e.g. mmdet::retinanet/retinanet_r18_fpn_1x_coco.py, and add
#   custom_hooks = [dict(type='mmrazor_ext.SparsityHook',
#                        sparsity_config=sparsity_config)]
# (tests/tools/test_mmdet_configs.py runs exactly that). mmdet detectors
# also expose forward(inputs, data_samples, mode='tensor'), the path the
# tracer uses.
_base_ = [
    '../_base_/datasets/coco_detection_tv_bs2.py',
    '../_base_/default_runtime.py',
]

model = dict(type='TorchvisionDetector', arch='retinanet', backbone='resnet18',
             num_classes=80, min_size=800, max_size=1333)
# (no evaluation: boxes need mmdet's CocoMetric, the optional path above)

sparsity_table = [30, 40, 50, 60, 70, 80, 90]
epochs_per_stage = 12
train_cfg = dict(by_epoch=True, max_epochs=epochs_per_stage * len(sparsity_table))
optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=1e-4),
    clip_grad=dict(max_norm=35, norm_type=2))
param_scheduler = dict(type='CosineAnnealingLR', by_epoch=True,
                       convert_to_iter_based=True, T_max=epochs_per_stage,
                       begin=0, end=epochs_per_stage)
default_hooks = dict(checkpoint=dict(interval=1, save_best=None))

sparsity_config = dict(
    mask_generator=dict(type='NormalMaskGenerator'),
    fake_sparse=dict(type='FakeSparse'),
    scheduler=dict(
        type='AmbaLevelPruneScheduler',
        kwargs=dict(total_iters=None, sparsity_table=sparsity_table,
                    no_prune_keyword='', no_prune_layer='', prun_algo=1,
                    prun_algo_tuning=0.5, dw_no_prune=False,
                    do_sparse_analysis=True,
                    default_input_shape=[1, 3, 800, 800],
                    output_dir=None, save_dir=None)),
    leaf_module=['FrozenBatchNorm2d'],
)
custom_hooks = [dict(type='SparsityHook', sparsity_config=sparsity_config)]
