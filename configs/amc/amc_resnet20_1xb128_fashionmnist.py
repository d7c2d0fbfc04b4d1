# AMC (DDPG) search of per-layer keep ratios for a trained ResNet-20 at 50 %
# of its MACs, then masked fine-tuning of the best episode and export.
# Small budget (used by the tests and the quick script); the ResNet-56
# config has the paper's 100 + 300 episodes.
_base_ = ['../baselines/resnet20_1xb128_fashionmnist.py']

# Trained baseline (tools/train.py on the baseline config writes it).
init_checkpoint = 'work_dirs/resnet20_1xb128_fashionmnist/epoch_3.pth'

model = dict(
    _delete_=True,
    type='AMCPruning',
    architecture={{_base_.model}},
    input_shape=(1, 1, 28, 28),
    # Knight-MC amc_cfg keys (see mmrazor_ext/apis/mc_pruning.py).
    amc_cfg=dict(
        agent_algo='DDPG',
        protocol='mac-constrained',
        pruning_pattern='channels',
        pruning_method='l1-rank',
        target_density=0.5,
        n_points_per_fm=10,
        group_size=1,
        action_range=[0.05, 0.95],
        save_top_k=5,
        ddpg_cfg=dict(bsize=64, tau=0.01, discount=1.0, init_delta=0.5,
                      delta_decay=0.95, hidden1=128, hidden2=128,
                      warmup=20, num_training_episodes=60, lr_a=1e-3,
                      lr_c=1e-3)),
    network=None,            # every prunable channel space, in graph order
    calib_batches=5,         # BN recalibration before each evaluation
    reward_batches=8,        # held-out training batches for the reward
    reward_data='train',
    init_checkpoint=init_checkpoint,
    bn_recalib_batches=20,
)
custom_hooks = [dict(type='AMCPruningHook')]

# Fine-tune: 1 epoch of one-cycle SGD at a lower peak LR.
max_epochs = 1
optim_wrapper = dict(optimizer=dict(lr=0.05))
param_scheduler = dict(eta_max=0.05, end=max_epochs)
train_cfg = dict(max_epochs=max_epochs)
