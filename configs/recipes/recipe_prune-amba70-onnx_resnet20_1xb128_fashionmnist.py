# Compression recipe on a trained Fashion-MNIST ResNet-20: L1 channel
# pruning to 50 % of the MACs (2 epochs) -> MSBench Amba level pruning to
# 70 % unstructured sparsity of the pruned network's layers (2 epochs) ->
# BN folding (zeros kept) -> ONNX checked with onnxruntime.
#   python tools/train.py configs/recipes/<this file>
_base_ = ['./_base_/recipe_resnet20_1xb128_fashionmnist.py']

epochs_per_stage = 2
model = dict(stages=[
    dict(type='OneShotPruning', metric='l1',
         target=dict(mode='flops', ratio=0.5, sampling='global'),
         bn_recalib_batches=20, epochs=epochs_per_stage),
    dict(name='Amba 70%', epochs=epochs_per_stage, sparsity=dict(
        scheduler=dict(
            type='AmbaLevelPruneScheduler',
            kwargs=dict(
                total_iters=None,      # None: this stage's iterations
                sparsity_table=[70],
                prun_algo=1,
                prun_algo_tuning=0.5,
                do_sparse_analysis=False,
                default_input_shape=[1, 1, 28, 28],
                output_dir=None,       # None: work_dir/stage1_sparse_analysis
                save_dir=None)))),     # None: work_dir/stage1_sparse_ckpts
    dict(type='Deploy', fuse_bn=True, onnx=True, check_onnx=True),
])
