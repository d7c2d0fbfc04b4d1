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
import os.path as osp
from functools import partial

import torch
import yaml

# The user's own training code, next to this script (Python puts the
# script's folder first on the module search path), and the steps both
# demos share.
from demo_setup import demo_parser, log_file, prepare, retrain, write_results
from train_val import recalibrate, validate

from mmrazor_ext.apis import MCPruning
from mmrazor_ext.estimators import get_model_complexity


def parse_args(argv=None):
    return demo_parser(
        __doc__.splitlines()[0], config='pruning_config.yaml',
        work_dir='work_dirs/kmc_pruning_demo',
        work_dir_help='output_dir of the YAML and logs/ go under it',
        epochs=1, epochs_help='fine-tune epochs',
        quick_help='tiny budget: 2 + 2 episodes, 512 training images').parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    # load the data set and the pre-trained model; loss, optimizer and
    # learning rate (as for ordinary training)
    setup = prepare(args)
    model = setup.model

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
        'val_fn': partial(validate, val_loader=setup.test_loader),
        'config_file': config_file,
        # addition: BN recalibration before every evaluation
        'calib_fn': partial(recalibrate, train_loader=setup.train_loader),
    }
    summary = MCPruning.prune_model(need_args)

    # re-train the pruned model: load the best pruned checkpoint
    best_pruning_weight = summary['best_checkpoint']
    MCPruning.load_pruned_model(model, weight_file=best_pruning_weight)
    pruned = validate(model, setup.test_loader)
    macs = get_model_complexity(model, torch.randn(1, 1, 28, 28))['flops']
    print(f"pruned ({best_pruning_weight}): top-1 {pruned['ind1']:.2f} %, "
          f"MACs {macs / 1e6:.2f} M of {summary['dense_macs'] / 1e6:.2f} M")
    result_info = retrain(setup, args.epochs, pruned, 'fine-tune')

    # save the pruned model (structure + weights)
    save_name = log_file(args.work_dir, 'pruned_finetuned.pth')
    MCPruning.save_pruned_model(model, save_name, extras={
        'acc1': result_info['ind1'], 'epochs': args.epochs})
    return write_results(args.work_dir, {
        'dense_top1': setup.dense['ind1'], 'pruned_top1': pruned['ind1'],
        'finetuned_top1': result_info['ind1'], 'macs': macs,
        'dense_macs': summary['dense_macs'],
        'best_checkpoint': best_pruning_weight, 'csv': summary['csv'],
        'saved': save_name, 'search_seconds': summary['seconds']})


if __name__ == '__main__':
    main()
