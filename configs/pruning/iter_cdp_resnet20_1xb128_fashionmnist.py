# Iterative CDP pruning: 3 steps (cubic schedule) to 50 % of the FLOPs,
# one fine-tuning epoch after each step, re-scoring the masked model.
_base_ = ['./cdp_resnet20_1xb128_fashionmnist.py']

model = dict(type='IterativePruning', num_steps=3, interval=1,
             schedule='cubic')
max_epochs = 3
param_scheduler = dict(end=max_epochs)
train_cfg = dict(max_epochs=max_epochs)
