# AMC (He et al. 2018) on a trained ResNet-56, Fashion-MNIST: DDPG searches
# the keep ratio of every channel space under a 50 % MAC budget
# (mac-constrained, fm-reconstruction, 100 warm-up + 300 training episodes
# as in the paper), then the best episode is fine-tuned in masked mode and
# exported (pruned_model.pth, subnet.json, report.json, kmc-pruning.csv).
# Everything else as in the ResNet-20 config.
_base_ = ['./amc_resnet20_1xb128_fashionmnist.py']

init_checkpoint = 'work_dirs/resnet56_1xb128_fashionmnist/epoch_3.pth'

model = dict(
    architecture=dict(backbone=dict(depth=56)),
    amc_cfg=dict(
        pruning_method='fm-reconstruction',
        save_top_k=5,
        ddpg_cfg=dict(bsize=64, hidden1=300, hidden2=300, warmup=100,
                      num_training_episodes=300, lr_a=1e-4)),
    calib_batches=10,
    reward_batches=20,
    feature_batches=4,
    init_checkpoint=init_checkpoint,
)
