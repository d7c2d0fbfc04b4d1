# Compress a trained Fashion-MNIST ResNet-20, then fine-tune it for 1 epoch
# of one-cycle SGD at a lower peak LR. An algorithm config replaces `model`
# by its algorithm around this architecture and `init_checkpoint`.
_base_ = ['../../baselines/resnet20_1xb128_fashionmnist.py']

# Trained baseline (tools/train.py on the baseline config writes it).
init_checkpoint = 'work_dirs/resnet20_1xb128_fashionmnist/epoch_3.pth'

max_epochs = 1
optim_wrapper = dict(optimizer=dict(lr=0.05))
param_scheduler = dict(eta_max=0.05, end=max_epochs)
train_cfg = dict(max_epochs=max_epochs)
