# ResNet-18 (ImageNet stage layout, 64..512 channels) with the CIFAR 3x3 stem.
model = dict(
    type='mmpretrain.ImageClassifier',
    backbone=dict(type='ResNet_CIFAR', depth=18, in_channels=3),
    neck=dict(type='mmpretrain.GlobalAveragePooling'),
    head=dict(
        type='mmpretrain.LinearClsHead',
        num_classes=10,
        in_channels=512,
        loss=dict(type='mmpretrain.CrossEntropyLoss', loss_weight=1.0),
    ),
)
