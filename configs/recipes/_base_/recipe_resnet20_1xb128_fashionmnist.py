# Shared frame of the Fashion-MNIST compression recipes: a CompressionRecipe
# around the trained ResNet-20 of configs/_base_/finetune, 2 epochs per
# training stage, RecipeLoop restarting the one-stage schedule at every stage.
# A recipe inheriting this sets model.stages (a list: replaced, not merged).
_base_ = ['../../_base_/finetune/resnet20_1xb128_fashionmnist.py']

epochs_per_stage = 2
model = dict(
    _delete_=True,
    type='CompressionRecipe',
    architecture={{_base_.model}},
    input_shape=(1, 1, 28, 28),
    init_checkpoint={{_base_.init_checkpoint}},
    stages=[])
param_scheduler = dict(end=epochs_per_stage)
train_cfg = dict(_delete_=True, type='RecipeLoop', val_interval=1)
