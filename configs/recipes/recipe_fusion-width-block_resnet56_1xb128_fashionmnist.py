# Compression recipe on a trained Fashion-MNIST ResNet-56: layer fusion
# (remove the weakest residual blocks by linear CKA to 70 % of the MACs, then
# L1 width pruning to 80 % of what is left; 2 epochs) -> Knight block
# sparsity (Cin32 x Cout64 tiles, half of each eligible layer's tiles; 2
# epochs) -> BN folding -> ONNX. Block sparsity needs full 32x64 tiles: a
# layer the width step narrowed below one tile is kept dense and listed with
# its reason in the report (misfit='skip'; 'error' would stop the run).
#   python tools/train.py configs/baselines/resnet56_1xb128_fashionmnist.py
#   python tools/train.py configs/recipes/<this file>
_base_ = ['./recipe_prune-2of4-fold-onnx_resnet20_1xb128_fashionmnist.py']

init_checkpoint = 'work_dirs/resnet56_1xb128_fashionmnist/epoch_3.pth'
model = dict(
    architecture=dict(backbone=dict(depth=56)),
    init_checkpoint=init_checkpoint,
    stages=[
        dict(type='LayerFusion', metric=dict(type='block_cka'),
             metric_batches=20, target=dict(mode='flops', ratio=0.7),
             removal_mode='identity',
             channel_pruning=dict(
                 metric='l1', target=dict(mode='flops', ratio=0.8),
                 pruner=dict(divisor=8)),
             bn_recalib_batches=20, epochs=2),
        dict(name='Knight block 32x64', epochs=2, misfit='skip',
             sparsity=dict(scheduler=dict(
                 type='BlockSparseScheduler',
                 kwargs=dict(sparsity_method='CustomPruner',
                             target_sparsity=0.5)))),
        dict(type='Deploy', fuse_bn=True, onnx=True, check_onnx=True),
    ])
