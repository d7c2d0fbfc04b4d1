# ResNet in the CIFAR layout (3x3 stem; 3 stages of 16/32/64 channels for
# depths 6n+2, ImageNet stages with 64..512 channels for 18/34/50/101/152).
# The resnet{depth}_cifar.py files set `depth` (and the head's in_channels
# where the last stage is wider than 64).
model = dict(
    type='mmpretrain.ImageClassifier',
    backbone=dict(type='ResNet_CIFAR', depth=20, in_channels=3),
    neck=dict(type='mmpretrain.GlobalAveragePooling'),
    head=dict(
        type='mmpretrain.LinearClsHead',
        num_classes=10,
        in_channels=64,
        loss=dict(type='mmpretrain.CrossEntropyLoss', loss_weight=1.0),
    ),
)
