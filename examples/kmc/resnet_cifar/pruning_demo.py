"""Knight-MC pruning demo on Fashion-MNIST (ResNet-20), mirroring Knight's
``examples/cls/resnet50_cifar/pruning_demo.py``.

1. load the data and a trained model (trains a short baseline when
   ``--pretrained`` is not given);
2. define loss, optimizer and LR schedule as for ordinary training;
3. ``MCPruning.prune_model(need_args)`` searches keep ratios with AMC and
   writes ``output/kmc-pruning.csv`` and the best checkpoints;
4. ``MCPruning.load_pruned_model(model, weight_file=best)`` slices the model
   in place (the optimizer defined in step 2 keeps working);
5. fine-tune, validate and ``MCPruning.save_pruned_model(...)``.

Run from the repository root::

    python examples/kmc/resnet_cifar/pruning_demo.py              # ~15 min
    python examples/kmc/resnet_cifar/pruning_demo.py --quick      # ~1 min
"""
import argparse
import json
import os
import os.path as osp
from functools import partial

import torch
import yaml

# The user's own training code, next to this script (Python puts the
# script's folder first on the module search path).
from train_val import (
    fmnist_loader,
    pretrained_model,
    recalibrate,
    train,
    validate,
)

from mmrazor_ext.apis import MCPruning
from mmrazor_ext.estimators import get_model_complexity
from mmrazor_ext.models import CifarResNet

HERE = osp.dirname(osp.abspath(__file__))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--data-dir', default='data/fashion_mnist')
    p.add_argument('--config', default=osp.join(HERE, 'pruning_config.yaml'))
    p.add_argument('--pretrained', help='trained ResNet-20 weights (a '
                   'tools/train.py checkpoint of the baseline config works)')
    p.add_argument('--work-dir', default='work_dirs/kmc_pruning_demo',
                   help="output_dir of the YAML and logs/ go under it")
    p.add_argument('--baseline-epochs', type=int, default=2)
    p.add_argument('--epochs', type=int, default=1, help='fine-tune epochs')
    p.add_argument('--train-samples', type=int, default=None)
    p.add_argument('--test-samples', type=int, default=2000)
    p.add_argument('--quick', action='store_true',
                   help='tiny budget: 2 + 2 episodes, 512 training images')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(0)
    if args.quick:
        args.train_samples = args.train_samples or 512
        args.test_samples = min(args.test_samples, 256)
        args.baseline_epochs = 1
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

    # the YAML's output_dir is taken relative to --work-dir
    with open(args.config) as f:
        cfg = yaml.safe_load(f)
    out_dir = osp.normpath(osp.join(
        args.work_dir, cfg['app_args'].get('output_dir', 'output')))
    cfg['app_args']['output_dir'] = out_dir
    if args.quick:
        cfg['amc_cfg']['ddpg_cfg'].update(warmup=2, num_training_episodes=2,
                                          bsize=16)
    config_file = osp.join(args.work_dir, 'pruning_config.yaml')
    with open(config_file, 'w') as f:
        yaml.safe_dump(cfg, f, sort_keys=False)

    need_args = {
        'model_fn': model,
        'val_fn': partial(validate, val_loader=test_loader),
        'config_file': config_file,
        # addition: BN recalibration before every evaluation
        'calib_fn': partial(recalibrate, train_loader=train_loader),
    }
    summary = MCPruning.prune_model(need_args)

    # re-train the pruned model: load the best pruned checkpoint
    best_pruning_weight = summary['best_checkpoint']
    MCPruning.load_pruned_model(model, weight_file=best_pruning_weight)
    pruned = validate(model, test_loader)
    macs = get_model_complexity(model, torch.randn(1, 1, 28, 28))['flops']
    print(f"pruned ({best_pruning_weight}): top-1 {pruned['ind1']:.2f} %, "
          f"MACs {macs / 1e6:.2f} M of {summary['dense_macs'] / 1e6:.2f} M")
    result_info = pruned
    for epoch in range(args.epochs):
        train_acc1, _, train_loss = train(model, optimizer, criterion,
                                          train_loader, lr_scheduler)
        result_info = validate(model, test_loader)
        print(f"fine-tune epoch {epoch + 1}: train top-1 {train_acc1:.2f}, "
              f"test top-1 {result_info['ind1']:.2f} %")

    # save the pruned model (structure + weights)
    save_name = osp.join(args.work_dir, 'logs', 'pruned_finetuned.pth')
    os.makedirs(osp.dirname(save_name), exist_ok=True)
    MCPruning.save_pruned_model(model, save_name, extras={
        'acc1': result_info['ind1'], 'epochs': args.epochs})
    results = {'dense_top1': dense['ind1'], 'pruned_top1': pruned['ind1'],
               'finetuned_top1': result_info['ind1'], 'macs': macs,
               'dense_macs': summary['dense_macs'],
               'best_checkpoint': best_pruning_weight,
               'csv': summary['csv'], 'saved': save_name,
               'search_seconds': summary['seconds']}
    with open(osp.join(args.work_dir, 'results.json'), 'w') as f:
        json.dump(results, f, indent=2)
    print(json.dumps(results, indent=2))
    return results


if __name__ == '__main__':
    main()
