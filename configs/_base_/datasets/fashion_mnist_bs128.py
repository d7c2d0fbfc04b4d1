# Fashion-MNIST (28x28 grey) from Debian's dataset-fashion-mnist, prepared by
# `make data` into data/fashion_mnist/. Mean/std are the training-set values.
# Loaders, test pipeline and evaluator are CIFAR-10's.
_base_ = ['./cifar10_bs128.py']

dataset_type = 'FashionMNIST'
data_root = 'data/fashion_mnist'
data_preprocessor = dict(mean=[72.94], std=[90.02])

train_pipeline = [
    dict(type='mmpretrain.RandomCrop', crop_size=28, padding=2),
    dict(type='mmpretrain.RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='mmpretrain.PackInputs'),
]
train_dataloader = dict(dataset=dict(type=dataset_type, data_root=data_root,
                                     pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(type=dataset_type, data_root=data_root))
test_dataloader = val_dataloader
