# Amba level pruning (MSBench AmbaLevelPruneScheduler) of ResNet-20 on
# Fashion-MNIST: one stage per sparsity_table entry, `epochs_per_stage`
# epochs each; the one-cycle LR schedule spans one stage and SparsityHook
# restarts it at every stage. Start from a dense model:
#   python tools/train.py configs/baselines/resnet20_1xb128_fashionmnist.py
#   tools/train_sparse.sh configs/sparsity/amba_resnet20_1xb128_fashionmnist.py 1 \
#       --cfg-options load_from=work_dirs/resnet20_1xb128_fashionmnist/epoch_3.pth
_base_ = ['../baselines/resnet20_1xb128_fashionmnist.py']

sparsity_table = [30, 50, 70]
epochs_per_stage = 1
max_epochs = epochs_per_stage * len(sparsity_table)

train_cfg = dict(max_epochs=max_epochs)
param_scheduler = dict(
    type='OneCycleLR', eta_max=0.05, pct_start=0.25, by_epoch=True,
    convert_to_iter_based=True, begin=0, end=epochs_per_stage)

sparsity_config = dict(
    mask_generator=dict(type='NormalMaskGenerator'),
    fake_sparse=dict(type='FakeSparse'),
    scheduler=dict(
        type='AmbaLevelPruneScheduler',
        kwargs=dict(
            total_iters=None,               # None: the Runner's max_iters
            sparsity_table=sparsity_table,
            no_prune_keyword='',
            no_prune_layer='',
            prun_algo=1,
            prun_algo_tuning=0.5,
            dw_no_prune=False,
            do_sparse_analysis=True,
            default_input_shape=[1, 1, 28, 28],
            output_dir=None,                # None: work_dir/sparse_analysis
            save_dir=None,                  # None: work_dir/sparse_ckpts
        )),
)
custom_hooks = [dict(type='SparsityHook', sparsity_config=sparsity_config)]
