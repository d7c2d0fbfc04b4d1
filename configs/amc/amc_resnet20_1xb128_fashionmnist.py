# AMC (DDPG) search of per-layer keep ratios for a trained ResNet-20 at 50 %
# of its MACs, then masked fine-tuning of the best episode and export.
# Small budget (used by the tests and the quick script); the ResNet-56
# config has the paper's 100 + 300 episodes.
_base_ = ['../_base_/finetune/resnet20_1xb128_fashionmnist.py']

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
    # None: every prunable channel space, in graph order. A list names
    # layers whose INPUT channels are pruned (Knight: the preceding layer's
    # filters follow), e.g. every block's backbone.layerS.B.conv2.
    network=None,
    calib_batches=5,         # BN recalibration before each evaluation
    reward_batches=8,        # held-out training batches for the reward
    reward_data='train',
    init_checkpoint={{_base_.init_checkpoint}},
    bn_recalib_batches=20,
)
custom_hooks = [dict(type='AMCPruningHook')]
