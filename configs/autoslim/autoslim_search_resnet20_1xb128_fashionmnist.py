# AutoSlim, step 2: greedy slimming of the trained slimmable ResNet-20 down to
# 50 % and 35 % of its FLOPs (run with tools/train.py). Writes
# subnet_flops0.50.json / subnet_flops0.35.json (+ sliced, BN-recalibrated
# weights .pth), autoslim_search.json (trajectory; a rerun resumes from it)
# and autoslim_search.png into the work dir. Train a subnet with
# configs/autoslim/autoslim_retrain_resnet20_1xb128_fashionmnist.py.
_base_ = ['./autoslim_resnet20_1xb128_fashionmnist.py']

# The supernet from step 1.
supernet = 'work_dirs/autoslim_resnet20_1xb128_fashionmnist/epoch_3.pth'
model = dict(init_checkpoint=supernet)

train_cfg = dict(
    _delete_=True,
    type='AutoSlimSearchLoop',
    target_flops_ratios=[0.5, 0.35],
    step=0.1,              # channels removed per greedy step: 10 % of a space
    tolerance=0.02,        # each subnet lands in [0.98 t, t]
    bn_batches=10,         # adaptive BN: K training batches per candidate
    heldout='train',       # a fixed training subset (the test set stays unseen)
    heldout_batches=8,
    batch_size=128,
    save_weights=True,
)
# The search loop takes no optimizer steps.
param_scheduler = None
