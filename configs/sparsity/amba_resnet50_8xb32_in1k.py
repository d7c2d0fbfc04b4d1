# Amba level pruning of ResNet-50 on ImageNet (MSBench: dense 76.76,
# 50 % 76.90, 80 % 75.57, 90 % 72.40). One stage per table entry,
# `epochs_per_stage` epochs each, cosine LR restarted at every stage.
_base_ = ['../baselines/resnet50_8xb32_in1k.py']

sparsity_table = [30, 40, 50, 60, 70, 80, 90]
epochs_per_stage = 5
train_cfg = dict(max_epochs=epochs_per_stage * len(sparsity_table))
# Iteration-based so the restart at a stage boundary is not followed by an
# epoch step of the scheduler.
param_scheduler = dict(type='CosineAnnealingLR', by_epoch=True,
                       convert_to_iter_based=True, T_max=epochs_per_stage,
                       begin=0, end=epochs_per_stage)
optim_wrapper = dict(optimizer=dict(lr=0.01))

sparsity_config = dict(
    mask_generator=dict(type='NormalMaskGenerator'),
    fake_sparse=dict(type='FakeSparse'),
    scheduler=dict(
        type='AmbaLevelPruneScheduler',
        kwargs=dict(total_iters=None, sparsity_table=sparsity_table,
                    no_prune_keyword='', no_prune_layer='', prun_algo=1,
                    prun_algo_tuning=0.5, dw_no_prune=False,
                    do_sparse_analysis=True,
                    default_input_shape=[1, 3, 224, 224],
                    output_dir=None, save_dir=None)),
)
custom_hooks = [dict(type='SparsityHook', sparsity_config=sparsity_config)]
