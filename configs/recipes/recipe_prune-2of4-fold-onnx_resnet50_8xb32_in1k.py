# ImageNet counterpart of the Fashion-MNIST 2:4 recipe: L1 channel pruning of
# a trained ResNet-50 to 50 % of the MACs (10 epochs) -> NVIDIA 2:4 on the
# pruned layers (10 epochs) -> BN folding -> ONNX (224x224). Config only
# (not run here). RecipeLoop runs in one process (no torchrun yet): with one
# GPU, scale the LR (--auto-scale-lr) or raise the batch size.
_base_ = ['../_base_/finetune/resnet50_8xb32_in1k.py']

epochs_per_stage = 10
model = dict(
    _delete_=True,
    type='CompressionRecipe',
    architecture={{_base_.model}},
    input_shape=(1, 3, 224, 224),
    init_checkpoint={{_base_.init_checkpoint}},
    eval_batches=50,            # report top-1 on 50 x 32 validation images
    stages=[
        dict(type='OneShotPruning', metric='l1',
             target=dict(mode='flops', ratio=0.5, sampling='global'),
             bn_recalib_batches=50, epochs=epochs_per_stage),
        dict(name='Ampere 2:4', epochs=epochs_per_stage, sparsity=dict(
            scheduler=dict(type='AmpereScheduler',
                           kwargs=dict(allow_recompute_mask=False)))),
        dict(type='Deploy', fuse_bn=True, onnx=True, check_onnx=True),
    ])
# One stage's schedule (x0.1 after 5 epochs); restarted at every stage.
param_scheduler = dict(milestones=[5])
train_cfg = dict(_delete_=True, type='RecipeLoop', val_interval=1)
