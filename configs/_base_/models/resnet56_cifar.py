# ResNet-56 in the CIFAR layout (3 stages of 16/32/64 channels).
model = dict(
    type='mmpretrain.ImageClassifier',
    backbone=dict(type='ResNet_CIFAR', depth=56, in_channels=3),
    neck=dict(type='mmpretrain.GlobalAveragePooling'),
    head=dict(
        type='mmpretrain.LinearClsHead',
        num_classes=10,
        in_channels=64,
        loss=dict(type='mmpretrain.CrossEntropyLoss', loss_weight=1.0),
    ),
)
