# Compression recipe on a trained Fashion-MNIST ResNet-20, in one run:
# L1 channel pruning to 50 % of the MACs (2 epochs of fine-tuning) -> NVIDIA
# 2:4 sparsity on the pruned network's layers (2 epochs) -> BN folding that
# keeps the 2:4 zeros -> ONNX checked with onnxruntime. The pruning stage
# gets pruner.divisor=16 (pruned widths stay 2:4 eligible) because a 2:4
# stage follows. Writes work_dirs/<this config>/recipe_report.json (+ table,
# PNG), recipe_model.pth and recipe_model.onnx.
#   python tools/train.py configs/baselines/resnet20_1xb128_fashionmnist.py
#   python tools/train.py configs/recipes/<this file>
_base_ = ['./_base_/recipe_resnet20_1xb128_fashionmnist.py']

epochs_per_stage = 2
model = dict(stages=[
    dict(type='OneShotPruning', metric='l1',
         target=dict(mode='flops', ratio=0.5, sampling='global'),
         bn_recalib_batches=20, epochs=epochs_per_stage),
    dict(name='Ampere 2:4', epochs=epochs_per_stage, sparsity=dict(
        scheduler=dict(type='AmpereScheduler',
                       kwargs=dict(allow_recompute_mask=False)))),
    dict(type='Deploy', fuse_bn=True, onnx=True, check_onnx=True),
])
