_base_ = ['./hybrid_train_resnet18_1xb128_cifar10.py']

init_checkpoint = 'work_dirs/resnet56_1xb128_cifar10/epoch_200.pth'
subnet = 'work_dirs/resnet56_1xb128_cifar10/subnet_flops0.50.json'
model = dict(architecture=dict(backbone=dict(depth=56),
                               head=dict(in_channels=64)),
             init_checkpoint=init_checkpoint, subnet=subnet)
