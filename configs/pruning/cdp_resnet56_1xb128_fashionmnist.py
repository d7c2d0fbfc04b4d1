# One-shot CDP pruning of a trained ResNet-56 (Fashion-MNIST) to 50 % of its
# FLOPs, then fine-tuning in masked mode; the pruned model is exported at the
# end.
_base_ = ['./_base_/oneshot_resnet56_1xb128_fashionmnist.py']

model = dict(metric=dict(type='cdp', coe=0.0), cdp_by='class',
             metric_batches=40)
