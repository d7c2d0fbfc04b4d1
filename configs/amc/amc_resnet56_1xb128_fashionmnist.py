# AMC (He et al. 2018) on a trained ResNet-56, Fashion-MNIST: DDPG searches
# the keep ratio of every channel space under a 50 % MAC budget
# (mac-constrained, fm-reconstruction, 100 warm-up + 300 training episodes
# as in the paper), then the best episode is fine-tuned in masked mode and
# exported (pruned_model.pth, subnet.json, report.json, kmc-pruning.csv).
_base_ = ['../baselines/resnet56_1xb128_fashionmnist.py']

# Trained baseline (tools/train.py on the baseline config writes it).
init_checkpoint = 'work_dirs/resnet56_1xb128_fashionmnist/epoch_3.pth'

model = dict(
    _delete_=True,
    type='AMCPruning',
    architecture={{_base_.model}},
    input_shape=(1, 1, 28, 28),
    amc_cfg=dict(
        agent_algo='DDPG',
        protocol='mac-constrained',
        pruning_pattern='channels',
        pruning_method='fm-reconstruction',
        target_density=0.5,
        n_points_per_fm=10,
        group_size=1,
        action_range=[0.05, 0.95],
        save_top_k=5,
        ddpg_cfg=dict(bsize=64, tau=0.01, discount=1.0, init_delta=0.5,
                      delta_decay=0.95, hidden1=300, hidden2=300,
                      warmup=100, num_training_episodes=300, lr_a=1e-4,
                      lr_c=1e-3)),
    network=None,
    calib_batches=10,
    reward_batches=20,
    reward_data='train',
    feature_batches=4,
    init_checkpoint=init_checkpoint,
    bn_recalib_batches=20,
)
custom_hooks = [dict(type='AMCPruningHook')]

max_epochs = 1
optim_wrapper = dict(optimizer=dict(lr=0.05))
param_scheduler = dict(eta_max=0.05, end=max_epochs)
train_cfg = dict(max_epochs=max_epochs)
