# Hybrid search (NSGA-II over per-space keep ratios, metric-guided seeds) on a
# trained ResNet-20; adaptive-BN evaluation. Results are written next to
# `init_checkpoint`: search_results.json, subnet_flops0.50.json,
# search_pareto.png. Re-running the same command resumes the study
# (sqlite:///<work_dir>/search.db).
_base_ = ['../baselines/resnet20_1xb128_fashionmnist.py']

init_checkpoint = 'work_dirs/resnet20_1xb128_fashionmnist/epoch_3.pth'

model = dict(
    _delete_=True,
    type='HybridSearch',
    architecture={{_base_.model}},
    input_shape=(1, 1, 28, 28),
    metric=dict(type='l1'),
    init_checkpoint=init_checkpoint,
    grid=dict(low=0.3, high=1.0, step=0.1),
    seeds=dict(global_prune_ratios=(0.2, 0.3, 0.4, 0.5, 0.6),
               flops_ratios=(0.75, 0.5, 0.35), uniform=True),
)

train_cfg = dict(
    _delete_=True,
    type='HybridSearchLoop',
    n_trials=100,
    objectives=('top1', 'flops'),
    sampler=dict(type='nsga2', population_size=20, seed=0),
    min_flops_ratio=0.2,
    targets=(0.5, 0.35),
    bn_batches=10,
    eval_source='val',
    eval_samples=1000,
    eval_mode='export',
)
# The search loop builds no optimizer steps or LR schedule.
param_scheduler = None
