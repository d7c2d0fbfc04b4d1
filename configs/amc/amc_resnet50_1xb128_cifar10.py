# AMC on ResNet-50 (ImageNet layout, CIFAR stem) for CIFAR-10, the Knight-MC
# "resnet50_cifar" demo as an mm config: the bottlenecks' inner widths are
# searched under a 50 % MAC budget with l1-rank channel choice
# (fm-reconstruction needs many feature points on 2048-wide layers), widths
# in multiples of 8; 100 + 300 episodes, then 30 epochs of masked
# fine-tuning and export.
#
# The baseline is this architecture trained on CIFAR-10, e.g. with
#   tools/train.py configs/baselines/resnet56_1xb128_cifar10.py \
#       --cfg-options model.backbone.depth=50 model.head.in_channels=2048
_base_ = [
    '../_base_/models/resnet50_cifar.py',
    '../_base_/datasets/cifar10_bs128.py',
    '../_base_/schedules/cifar10_bs128.py',
    '../_base_/default_runtime.py',
]

init_checkpoint = 'work_dirs/resnet50_1xb128_cifar10/epoch_200.pth'

architecture = {{_base_.model}}
# Knight `network:` semantics: a listed layer's INPUT channels are pruned
# and the directly preceding layer loses the matching filters, so listing
# conv2 / conv3 of every bottleneck (the seed's list) prunes the filters of
# conv1 / conv2. A conv1 (its input is the residual stream) would be an
# error naming the residual group.
network = [f'backbone.layer{s + 1}.{b}.conv{c}'
           for s, n in enumerate((3, 4, 6, 3)) for b in range(n)
           for c in (2, 3)]

model = dict(
    _delete_=True,
    type='AMCPruning',
    architecture=architecture,
    input_shape=(1, 3, 32, 32),
    amc_cfg=dict(
        agent_algo='DDPG',
        protocol='mac-constrained',
        pruning_pattern='channels',
        pruning_method='l1-rank',
        target_density=0.5,
        n_points_per_fm=10,
        group_size=8,
        action_range=[0.05, 0.95],
        save_top_k=5,
        ddpg_cfg=dict(bsize=64, tau=0.01, discount=1.0, init_delta=0.5,
                      delta_decay=0.95, hidden1=300, hidden2=300,
                      warmup=100, num_training_episodes=300, lr_a=1e-4,
                      lr_c=1e-3)),
    network=network,
    calib_batches=10,
    reward_batches=20,
    reward_data='train',
    init_checkpoint=init_checkpoint,
    bn_recalib_batches=50,
)
custom_hooks = [dict(type='AMCPruningHook')]
param_scheduler = dict(milestones=[15, 25])
train_cfg = dict(max_epochs=30)
