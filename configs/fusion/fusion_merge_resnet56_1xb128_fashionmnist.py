# Layer pruning with block merging (rule: mmrazor_ext/graph/merge.py): the
# weakest blocks are removed to <= 50 % of the FLOPs as in the base config;
# of the remaining blocks, those whose residual branch is nearly linear
# (measured merge error <= linear_tol on 20 training batches) are composed
# into one 5x5 conv each. A 5x5 conv costs 25 c^2 MACs per pixel against
# 18 c^2 for the two 3x3 convs, so the FLOPs target removes more blocks to
# pay for each merge. On a trained ResNet-56 few or no blocks qualify (their
# ReLUs change about half of the entries): see README, "Layer fusion".
_base_ = ['./fusion_resnet56_1xb128_fashionmnist.py']

model = dict(
    merging=dict(linear_tol=0.25, max_blocks=None, allow_more_flops=True,
                 batches=20),
)
