# Train the subnet found by hybrid search (or AutoSlim / AMC): the structure
# comes from `subnet` (a subnet JSON), the weights are sliced from
# `init_checkpoint` (set init_checkpoint=None and from_scratch=True to train
# the searched structure from scratch).
_base_ = ['../baselines/resnet20_1xb128_fashionmnist.py']

init_checkpoint = 'work_dirs/resnet20_1xb128_fashionmnist/epoch_3.pth'
subnet = 'work_dirs/resnet20_1xb128_fashionmnist/subnet_flops0.50.json'

model = dict(
    _delete_=True,
    type='SubnetModel',
    architecture={{_base_.model}},
    subnet=subnet,
    init_checkpoint=init_checkpoint,
    from_scratch=False,
)
max_epochs = 1
optim_wrapper = dict(optimizer=dict(lr=0.05))
param_scheduler = dict(eta_max=0.05, end=max_epochs)
train_cfg = dict(max_epochs=max_epochs)
