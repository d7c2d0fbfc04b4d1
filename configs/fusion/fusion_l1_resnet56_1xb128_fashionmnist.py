# Depth then width: remove residual blocks down to 71 % of the FLOPs, then
# prune channels of the shallower ResNet-56 (L1, one global threshold) to
# 71 % of its FLOPs: about 50 % of the original in total.
_base_ = ['./fusion_resnet56_1xb128_fashionmnist.py']

model = dict(
    target=dict(mode='flops', ratio=0.71),
    channel_pruning=dict(
        metric=dict(type='l1'),
        target=dict(mode='flops', ratio=0.71, sampling='global')),
)
