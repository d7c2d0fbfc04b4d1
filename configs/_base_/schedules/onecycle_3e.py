# Short one-cycle SGD schedule (3 epochs): ~92.7 % on Fashion-MNIST with
# ResNet-20. Change `max_epochs` and the scheduler `end` together
# (tools/demo.py does it through `set_epochs`).
max_epochs = 3
optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=5e-4,
                   nesterov=True))
param_scheduler = dict(
    type='OneCycleLR', eta_max=0.2, pct_start=0.25, by_epoch=True,
    convert_to_iter_based=True, begin=0, end=max_epochs)
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=1)
val_cfg = dict()
test_cfg = dict()
auto_scale_lr = dict(base_batch_size=128)
