# Train the subnet found by hybrid search (or AutoSlim / AMC): the structure
# comes from `subnet` (a subnet JSON), the weights are sliced from
# `init_checkpoint` (set init_checkpoint=None and from_scratch=True to train
# the searched structure from scratch).
_base_ = ['../_base_/finetune/resnet20_1xb128_fashionmnist.py']

subnet = 'work_dirs/resnet20_1xb128_fashionmnist/subnet_flops0.50.json'

model = dict(
    _delete_=True,
    type='SubnetModel',
    architecture={{_base_.model}},
    subnet=subnet,
    init_checkpoint={{_base_.init_checkpoint}},
    from_scratch=False,
)
