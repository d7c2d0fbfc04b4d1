# Layer pruning of a trained ResNet-56 on Fashion-MNIST to <= 50 % of its
# FLOPs: residual blocks are scored by 1 - linear CKA(input, output) and the
# weakest are replaced by identity (the two downsampling blocks are kept),
# then BN is recalibrated, the model fine-tuned 1 epoch and exported.
# Everything else as in the ResNet-20 config.
_base_ = ['./fusion_resnet20_1xb128_fashionmnist.py']

init_checkpoint = 'work_dirs/resnet56_1xb128_fashionmnist/epoch_3.pth'

model = dict(
    architecture=dict(backbone=dict(depth=56)),
    target=dict(_delete_=True, mode='flops', ratio=0.5),
    # Depth then width in one run: see fusion_l1_resnet56_1xb128_fashionmnist.py
    # (channel_pruning=dict(metric=..., target=...)).
    fuse_bn=False,
    init_checkpoint=init_checkpoint,
)
