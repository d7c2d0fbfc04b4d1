# Iterative L1 pruning of ResNet-56: 4 linear steps to 50 % of the FLOPs.
_base_ = ['./l1_resnet56_1xb128_fashionmnist.py']

model = dict(type='IterativePruning', num_steps=4, interval=1,
             schedule='linear')
max_epochs = 4
param_scheduler = dict(end=max_epochs)
train_cfg = dict(max_epochs=max_epochs)
