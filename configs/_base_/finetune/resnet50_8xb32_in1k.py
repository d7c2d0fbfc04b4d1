# Compress a trained ImageNet ResNet-50, then fine-tune it for 30 epochs
# (x0.1 at 10 and 20). An algorithm config replaces `model` by its algorithm
# around this architecture and `init_checkpoint`.
_base_ = ['../../baselines/resnet50_8xb32_in1k.py']

init_checkpoint = 'work_dirs/resnet50_8xb32_in1k/epoch_100.pth'

param_scheduler = dict(milestones=[10, 20])
train_cfg = dict(max_epochs=30)
