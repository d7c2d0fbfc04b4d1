# The seed's `run_hybrid_cifar_resnet18.sh test_search_geatpy_discrete_inference`:
# discrete keep ratios, inference-only (adaptive-BN) evaluation, NSGA-II in
# place of geatpy.
_base_ = ['../baselines/resnet18_1xb128_cifar10.py']

init_checkpoint = 'work_dirs/resnet18_1xb128_cifar10/epoch_200.pth'

model = dict(
    _delete_=True,
    type='HybridSearch',
    architecture={{_base_.model}},
    input_shape=(1, 3, 32, 32),
    metric=dict(type='l1'),
    init_checkpoint=init_checkpoint,
    pruner=dict(divisor=8),
    grid=dict(low=0.3, high=1.0, step=0.1),
)

train_cfg = dict(
    _delete_=True,
    type='HybridSearchLoop',
    n_trials=300,
    objectives=('top1', 'flops'),
    sampler=dict(type='nsga2', population_size=30, seed=0),
    min_flops_ratio=0.2,
    targets=(0.5, 0.35),
    bn_batches=50,
    eval_source='train',
    eval_samples=5000,
)
param_scheduler = None
