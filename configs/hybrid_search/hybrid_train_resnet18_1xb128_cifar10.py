_base_ = ['../baselines/resnet18_1xb128_cifar10.py']

init_checkpoint = 'work_dirs/resnet18_1xb128_cifar10/epoch_200.pth'
subnet = 'work_dirs/resnet18_1xb128_cifar10/subnet_flops0.50.json'

model = dict(
    _delete_=True,
    type='SubnetModel',
    architecture={{_base_.model}},
    subnet=subnet,
    init_checkpoint=init_checkpoint,
    from_scratch=False,
)
