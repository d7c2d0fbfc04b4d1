# AutoSlim, step 3: train a searched subnet of ResNet-20 (Fashion-MNIST),
# starting from the slimmable supernet's weights sliced to the kept channels
# (`from_scratch=True` re-initialises them instead). The search writes both
# files: supernet.pth (architecture weights) and one subnet JSON per target.
_base_ = ['../baselines/resnet20_1xb128_fashionmnist.py']

search_dir = 'work_dirs/autoslim_resnet20_1xb128_fashionmnist/search'
supernet = f'{search_dir}/supernet.pth'
subnet = f'{search_dir}/subnet_flops0.50.json'

model = dict(
    _delete_=True,
    type='SubnetModel',
    architecture={{_base_.model}},
    subnet=subnet,
    init_checkpoint=supernet,
    from_scratch=False,
)
