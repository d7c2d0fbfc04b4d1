# The ResNet-20 recipe (L1 pruning to 50 % MACs -> 2:4 -> BN folding ->
# ONNX) on a trained Fashion-MNIST ResNet-56, 2 epochs per training stage.
#   python tools/train.py configs/baselines/resnet56_1xb128_fashionmnist.py
#   python tools/train.py configs/recipes/<this file>
_base_ = ['./recipe_prune-2of4-fold-onnx_resnet20_1xb128_fashionmnist.py']

init_checkpoint = 'work_dirs/resnet56_1xb128_fashionmnist/epoch_3.pth'
model = dict(architecture=dict(backbone=dict(depth=56)),
             init_checkpoint=init_checkpoint)
