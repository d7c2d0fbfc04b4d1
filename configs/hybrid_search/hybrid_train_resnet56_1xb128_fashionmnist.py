_base_ = ['./hybrid_train_resnet20_1xb128_fashionmnist.py']

init_checkpoint = 'work_dirs/resnet56_1xb128_fashionmnist/epoch_3.pth'
subnet = 'work_dirs/resnet56_1xb128_fashionmnist/subnet_flops0.50.json'
model = dict(architecture=dict(backbone=dict(depth=56)),
             init_checkpoint=init_checkpoint, subnet=subnet)
