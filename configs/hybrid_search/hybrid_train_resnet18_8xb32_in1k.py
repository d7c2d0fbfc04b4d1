# ImageNet ResNet-18 subnet training (the seed's
# run_hybrid_in1k_resnet18_train.sh GPU_IDS JSON_PATH NGPUS).
_base_ = ['../baselines/resnet18_8xb32_in1k.py']

init_checkpoint = None   # supernet weights, e.g. a trained ResNet-18
subnet = None            # set by the script: model.subnet=<json>

model = dict(
    _delete_=True,
    type='SubnetModel',
    architecture={{_base_.model}},
    subnet=subnet,
    init_checkpoint=init_checkpoint,
    from_scratch=False,
)
