# AutoSlim, step 1: slimmable training of ResNet-20 on Fashion-MNIST with the
# sandwich rule (largest, smallest = 35 % of every channel space, 2 random
# per-space widths per step; in-place distillation from the largest).
# Validation measures the full width. Then run
# autoslim_search_resnet20_1xb128_fashionmnist.py on the last checkpoint.
# One optimizer step per batch covers four widths: a step costs about 4x a
# dense one. Same 3-epoch one-cycle schedule as the baseline.
_base_ = ['./_base_/slimmable_resnet20_1xb128_fashionmnist.py']

model = dict(random_mode='space', distill_weight=1.0, bn_stats='largest')
