"""AMC (DDPG) vs uniform L1 at the same MACs on a trained ResNet (CIFAR
layout) on real Fashion-MNIST, before fine-tuning.

A baseline is trained on ``--train-samples`` images (cached in
``--out-dir``). AMC runs through the Knight-MC facade
(``MCPruning.prune_model``) with the reward measured on ``--reward-samples``
held-out *training* images (as in AMC; the test images are never used for
the search) after BN recalibration on ``--calib-batches`` training batches.
Its best episode's checkpoint is reloaded with ``load_pruned_model`` and
scored on ``--test-samples`` test images; uniform L1 is pruned to the same
MACs, BN-recalibrated on the same batches and scored on the same images.
Prints one table and writes ``amc.json`` / ``amc.csv`` to ``--out-dir``.

Example (about 10 minutes on a busy 2-core machine):
    python tools/benchmark/amc.py --depth 20 --baseline-epochs 1 \\
        --train-samples 10000 --warmup 10 --episodes 20 --test-samples 1000
"""
import argparse
import copy
import csv
import os.path as osp
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

from mmrazor_ext.apis.benchmark import (
    baseline_path,
    cached_baseline,
    load_fashion_mnist,
    split_batches,
    top1,
    topk_metrics,
)
from mmrazor_ext.utils.tables import format_table, write_json_csv


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--depth', type=int, default=20)
    p.add_argument('--data-root', default='data/fashion_mnist')
    p.add_argument('--baseline-epochs', type=int, default=1)
    p.add_argument('--train-samples', type=int, default=10000)
    p.add_argument('--reward-samples', type=int, default=1000)
    p.add_argument('--test-samples', type=int, default=1000)
    p.add_argument('--target-density', type=float, default=0.5)
    p.add_argument('--method', default='l1-rank',
                   choices=('l1-rank', 'stochastic-l1-rank',
                            'fm-reconstruction'))
    p.add_argument('--protocol', default='mac-constrained')
    p.add_argument('--warmup', type=int, default=10)
    p.add_argument('--episodes', type=int, default=20)
    p.add_argument('--hidden', type=int, default=128)
    p.add_argument('--lr-a', type=float, default=1e-3)
    p.add_argument('--calib-batches', type=int, default=5)
    p.add_argument('--batch-size', type=int, default=128)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--out-dir', default='work_dirs/bench_amc')
    args = p.parse_args(argv)
    from mmrazor_ext.apis import MCPruning
    from mmrazor_ext.models import CifarResNet
    from mmrazor_ext.pruners import ChannelPruner
    from mmrazor_ext.utils.evaluation import recalibrate_bn

    torch.manual_seed(args.seed)
    t_all = time.time()
    xs, ys = load_fashion_mnist(args.data_root, 'train',
                                args.train_samples + args.reward_samples)
    xr, yr = xs[args.train_samples:], ys[args.train_samples:]
    xs, ys = xs[:args.train_samples], ys[:args.train_samples]
    xt, yt = load_fashion_mnist(args.data_root, 'test', args.test_samples)
    train_loader = DataLoader(TensorDataset(xs, ys), args.batch_size,
                              shuffle=True, drop_last=True)
    test_loader = DataLoader(TensorDataset(xt, yt), 512)
    reward_batches = split_batches(xr, yr, 500)
    calib = split_batches(xs, ys, args.batch_size)[:args.calib_batches]

    # baseline (cached)
    t0 = time.time()
    model = cached_baseline(
        args.depth, train_loader, args.baseline_epochs,
        baseline_path(args.out_dir, args.depth, args.baseline_epochs, len(xs)))
    baseline_seconds = time.time() - t0
    dense_test = top1(model, test_loader)
    dense_reward = topk_metrics(model, reward_batches)['ind1']

    # AMC through the Knight-MC facade
    cfg = {
        'app_args': {'arch': f'resnet{args.depth}', 'dataset': 'fmnist',
                     'input_shape': [1, 1, 28, 28], 'device': 'cpu',
                     'output_dir': osp.join(args.out_dir, 'kmc'),
                     'seed': args.seed},
        'amc_cfg': {'protocol': args.protocol,
                    'pruning_method': args.method,
                    'target_density': args.target_density,
                    'action_range': [0.05, 0.95], 'save_top_k': 3,
                    'ddpg_cfg': {'warmup': args.warmup,
                                 'num_training_episodes': args.episodes,
                                 'hidden1': args.hidden,
                                 'hidden2': args.hidden, 'bsize': 64,
                                 'lr_a': args.lr_a, 'lr_c': 1e-3}},
    }
    summary = MCPruning.prune_model({
        'model_fn': model,
        'val_fn': lambda m: topk_metrics(m, reward_batches),
        'calib_fn': lambda m: recalibrate_bn(m, calib, len(calib)),
        'feature_fn': torch.no_grad()(lambda m: [m(x) for x, _ in calib]),
        'config_file': cfg})
    best = summary['best']
    amc_model = MCPruning.load_pruned_model(CifarResNet(args.depth, 10, 1),
                                            summary['best_checkpoint'])
    amc_test = top1(amc_model, test_loader)
    with open(osp.join(args.out_dir, 'kmc', 'amc-episodes.csv')) as f:
        episodes = list(csv.DictReader(f))
    warm = [float(e['ind1']) for e in episodes[:args.warmup]]
    trained = [float(e['ind1']) for e in episodes[args.warmup:]]

    # uniform L1 at the same MACs
    uni = copy.deepcopy(model).eval()
    # divisor=1: free widths, as AMC's own per-layer ratios
    pruner = ChannelPruner(uni, torch.randn(1, 1, 28, 28), divisor=1)
    density = best['total_macs'] / summary['dense_macs']
    subnet = pruner.sample_subnet_for_flops(
        density, pruner.get_metric_local('l1'), mode='uniform', tol=0.005)
    pruner.set_subnet(subnet)
    recalibrate_bn(uni, calib, len(calib))
    uni_reward = topk_metrics(uni, reward_batches)['ind1']
    small = pruner.export()
    uni_test = top1(small, test_loader)
    uni_density = pruner.estimate_flops(subnet) / pruner.original_flops

    rows = [
        {'method': 'dense', 'macs_ratio': 1.0, 'top1_reward_set':
         dense_reward, 'top1_test': dense_test},
        {'method': f'amc ({args.method}, best episode {best["episode"]})',
         'macs_ratio': round(density, 4), 'top1_reward_set': best['ind1'],
         'top1_test': amc_test},
        {'method': 'uniform l1', 'macs_ratio': round(uni_density, 4),
         'top1_reward_set': uni_reward, 'top1_test': uni_test},
    ]
    budget = {k: getattr(args, k) for k in (
        'depth', 'baseline_epochs', 'train_samples', 'reward_samples',
        'test_samples', 'target_density', 'method', 'protocol', 'warmup',
        'episodes', 'hidden', 'lr_a', 'calib_batches', 'seed')}
    result = {
        'budget': budget, 'rows': rows,
        'search_seconds': summary['seconds'],
        'episodes_per_minute': summary['episodes_per_minute'],
        'baseline_seconds': round(baseline_seconds, 1),
        'total_seconds': round(time.time() - t_all, 1),
        'warmup_ind1': {'best': max(warm), 'mean': sum(warm) / len(warm)},
        'trained_ind1': {'best': max(trained),
                         'mean': sum(trained) / len(trained),
                         'mean_last5': sum(trained[-5:]) /
                         len(trained[-5:])} if trained else None,
        'best_strategy': best['strategy'],
        'threads': torch.get_num_threads(),
    }
    write_json_csv(args.out_dir, 'amc', result, rows)
    print(f'\nbudget: {budget}')
    print(format_table(rows, [
        ('method', 'method', '<40'), ('MACs', 'macs_ratio', '>6.3f'),
        ('top-1 reward set', 'top1_reward_set', '>17.2f'),
        ('top-1 test', 'top1_test', '>11.2f')]))
    print(f"AMC search: {summary['episodes']} episodes in "
          f"{summary['seconds']:.0f} s ({summary['episodes_per_minute']:.1f}"
          f" episodes/min); reward-set top-1 warm-up mean "
          f"{result['warmup_ind1']['mean']:.2f} / best "
          f"{result['warmup_ind1']['best']:.2f}, trained mean "
          f"{result['trained_ind1']['mean']:.2f} / best "
          f"{result['trained_ind1']['best']:.2f}; total "
          f"{result['total_seconds']:.0f} s")
    return result


if __name__ == '__main__':
    main()
