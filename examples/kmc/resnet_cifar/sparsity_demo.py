"""Knight-MC sparsity demo on Fashion-MNIST (ResNet-20), mirroring Knight's
``examples/cls/resnet50_cifar/sparsity_demo.py``.

1. load the data and a trained model (trains a short baseline when
   ``--pretrained`` is not given; shared with ``pruning_demo.py``);
2. define loss, optimizer and LR schedule as for ordinary training;
3. ``MCSparsity.sparse_model(need_args)`` masks the weights listed under
   ``network`` (``sparsity_config.yaml``: Cin32 x Cout64 blocks);
4. re-train: every ``optimizer.step()`` re-applies the masks;
5. ``MCSparsity.save_sparse_model(...)``, then
   ``MCSparsity.load_sparse_model(model, weight_file=...)`` into a fresh
   model, which must give the same outputs.

Run from the repository root::

    python examples/kmc/resnet_cifar/sparsity_demo.py              # ~5 min
    python examples/kmc/resnet_cifar/sparsity_demo.py --quick      # seconds
"""
import argparse
import json
import os
import os.path as osp

import torch

# The user's own training code, next to this script (Python puts the
# script's folder first on the module search path).
from train_val import fmnist_loader, pretrained_model, train, validate

from mmrazor_ext.apis import MCSparsity
from mmrazor_ext.models import CifarResNet

HERE = osp.dirname(osp.abspath(__file__))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--data-dir', default='data/fashion_mnist')
    p.add_argument('--config', default=osp.join(HERE, 'sparsity_config.yaml'))
    p.add_argument('--pretrained', help='trained ResNet-20 weights (a '
                   'tools/train.py checkpoint of the baseline config works)')
    p.add_argument('--work-dir', default='work_dirs/kmc_sparsity_demo',
                   help='logs/ and results.json go under it')
    p.add_argument('--baseline-epochs', type=int, default=2)
    p.add_argument('--epochs', type=int, default=2, help='re-train epochs')
    p.add_argument('--train-samples', type=int, default=None)
    p.add_argument('--test-samples', type=int, default=2000)
    p.add_argument('--quick', action='store_true',
                   help='tiny budget: 512 training images, one epoch each')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(0)
    if args.quick:
        args.train_samples = args.train_samples or 512
        args.test_samples = min(args.test_samples, 256)
        args.baseline_epochs = 1
        args.epochs = 1
    os.makedirs(args.work_dir, exist_ok=True)

    # load the data set and the pre-trained model
    train_loader, test_loader = fmnist_loader(
        args.data_dir, train_limit=args.train_samples,
        test_limit=args.test_samples)
    model = CifarResNet(20, num_classes=10, in_channels=1)
    pretrained_model(model, train_loader, args.work_dir,
                     args.baseline_epochs, args.pretrained)
    dense = validate(model, test_loader)
    print(f"dense model: top-1 {dense['ind1']:.2f} %")

    # loss, optimizer and learning rate (as for ordinary training)
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9,
                                weight_decay=5e-4, nesterov=True)
    lr_scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, 0.05, total_steps=max(8, args.epochs * len(train_loader)))

    # sparsify the trained model (masks on the `network` weights)
    need_args = {'model_fn': model, 'optimizer': optimizer,
                 'config_file': args.config}
    MCSparsity.sparse_model(need_args)
    sched = model.__dict__['_mc_sparsity']
    sparse = validate(model, test_loader)
    print(f'sparsified {len(sched.layers)} layer(s), global sparsity '
          f'{100 * sched.global_sparsity():.1f} % of their weights: top-1 '
          f"{sparse['ind1']:.2f} %")

    # re-train the sparse model (optimizer.step() keeps the masks applied)
    result_info = sparse
    for epoch in range(args.epochs):
        train_acc1, _, train_loss = train(model, optimizer, criterion,
                                          train_loader, lr_scheduler)
        result_info = validate(model, test_loader)
        print(f"re-train epoch {epoch + 1}: train top-1 {train_acc1:.2f}, "
              f"test top-1 {result_info['ind1']:.2f} %")

    # save the model with its sparsity masks, then load it as Knight does
    save_name = osp.join(args.work_dir, 'logs', 'sparse_retrained.pth')
    os.makedirs(osp.dirname(save_name), exist_ok=True)
    MCSparsity.save_sparse_model(model, save_name, extras={
        'acc1': result_info['ind1'], 'epochs': args.epochs})
    reloaded = CifarResNet(20, num_classes=10, in_channels=1)
    MCSparsity.load_sparse_model(reloaded, weight_file=save_name)
    again = validate(reloaded, test_loader)
    print(f"reloaded ({save_name}): top-1 {again['ind1']:.2f} %")

    results = {'dense_top1': dense['ind1'], 'sparse_top1': sparse['ind1'],
               'retrained_top1': result_info['ind1'],
               'reloaded_top1': again['ind1'],
               'global_sparsity': sched.global_sparsity(),
               'layer_sparsity': dict(sched.layer_sparsity()),
               'saved': save_name}
    with open(osp.join(args.work_dir, 'results.json'), 'w') as f:
        json.dump(results, f, indent=2)
    print(json.dumps(results, indent=2))
    return results


if __name__ == '__main__':
    main()
