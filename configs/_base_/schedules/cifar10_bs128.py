# He et al. (2016) CIFAR schedule: SGD 0.1, x0.1 at epochs 100 and 150.
optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=1e-4,
                   nesterov=True))
param_scheduler = dict(type='MultiStepLR', by_epoch=True,
                       milestones=[100, 150], gamma=0.1)
train_cfg = dict(by_epoch=True, max_epochs=200, val_interval=1)
val_cfg = dict()
test_cfg = dict()
auto_scale_lr = dict(base_batch_size=128)
