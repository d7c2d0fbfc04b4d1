# One-shot L1 pruning of ResNet-56 on CIFAR-10 to 48 % of its FLOPs (the
# paper's -52 % setting), fine-tuned for 100 epochs.
_base_ = ['./_base_/oneshot_resnet56_1xb128_cifar10.py']

model = dict(metric='l1')
