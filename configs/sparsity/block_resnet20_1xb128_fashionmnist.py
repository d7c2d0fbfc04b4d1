# Knight-MC CustomPruner block sparsity (Cin32 x Cout64 tiles) on ResNet-20 /
# Fashion-MNIST. Only layers with at least one full 32x64 tile qualify (the
# 64-filter stage); use sparsity_method='Pruner2to4' for 2:4.
_base_ = ['../baselines/resnet20_1xb128_fashionmnist.py']

sparsity_config = dict(
    scheduler=dict(
        type='BlockSparseScheduler',
        kwargs=dict(sparsity_method='CustomPruner', target_sparsity=0.5)),
)
custom_hooks = [dict(type='SparsityHook', sparsity_config=sparsity_config)]
