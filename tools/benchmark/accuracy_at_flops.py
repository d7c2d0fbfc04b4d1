"""Top-1 of pruning metrics at the same FLOPs target, side by side.

One trained ResNet (CIFAR layout) on Fashion-MNIST; each method prunes a copy
to ``--flops-ratio`` of the FLOPs, recalibrates BN, is exported (physically
sliced) and fine-tuned with the same budget. Methods: CDP, L1, Taylor (one
global threshold), uniform L1 and uniform random. Prints one table and
writes ``accuracy_at_flops.json`` / ``.csv`` to ``--out-dir``.

Budgets (``--baseline-epochs``, ``--finetune-epochs``, ``--train-samples``)
make it run in minutes (quick) or as the full experiment:
    python tools/benchmark/accuracy_at_flops.py --depth 56 \\
        --baseline-epochs 3 --finetune-epochs 1            # full, ~1 h on 2 cores
    python tools/benchmark/accuracy_at_flops.py --depth 20 \\
        --baseline-epochs 1 --finetune-epochs 1 --train-samples 20000  # quick
"""
import argparse
import copy
import os.path as osp
import time

import torch
import torch.nn.functional as F

from mmrazor_ext.apis.benchmark import (
    add_baseline_args,
    baseline_from_args,
    top1,
    train_one_cycle,
)
from mmrazor_ext.utils import atomic_write_json
from mmrazor_ext.utils.tables import atomic_write_csv

METHODS = ('cdp', 'l1', 'taylor', 'uniform_l1', 'random')


def prune(method, model, train_loader, flops_ratio, seed, metric_batches):
    from mmrazor_ext.metrics import FeatureCollector, TaylorAccumulator
    from mmrazor_ext.pruners import ChannelPruner
    from mmrazor_ext.utils.evaluation import recalibrate_bn
    model = copy.deepcopy(model).eval()
    pruner = ChannelPruner(model, torch.randn(1, 1, 28, 28))
    batches = [b for _, b in zip(range(metric_batches), train_loader)]
    if method == 'cdp':
        col = FeatureCollector(pruner.graph, by='class', num_classes=10)
        for x, y in batches:
            col.update(x, y)
        scores = pruner.get_metric_local('cdp', col.documents())
    elif method == 'taylor':
        acc = TaylorAccumulator(pruner.graph, model)
        scores = pruner.get_metric_local('taylor', acc.run(
            batches, lambda b: F.cross_entropy(model(b[0]), b[1])))
    elif method == 'random':
        g = torch.Generator().manual_seed(seed)
        scores = {n: torch.rand(s.num_channels, generator=g)
                  for n, s in pruner.channel_spaces.items()}
    else:
        scores = pruner.get_metric_local('l1')
    mode = 'uniform' if method in ('uniform_l1', 'random') else 'global'
    subnet = pruner.sample_subnet_for_flops(flops_ratio, scores, mode=mode)
    pruner.set_subnet(subnet)
    recalibrate_bn(model, batches, len(batches))
    small = pruner.export()
    return small, pruner.estimate_flops(subnet) / pruner.original_flops


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_baseline_args(p)
    p.add_argument('--finetune-epochs', type=int, default=1)
    p.add_argument('--flops-ratio', type=float, default=0.5)
    p.add_argument('--methods', nargs='+', default=list(METHODS),
                   choices=METHODS)
    p.add_argument('--metric-batches', type=int, default=20)
    p.add_argument('--out-dir', default='work_dirs/benchmark_accuracy_at_flops')
    args = p.parse_args(argv)
    t0 = time.time()
    model, train_loader, test_loader = baseline_from_args(args)
    dense = top1(model, test_loader)
    rows = [{'method': 'dense', 'flops_ratio': 1.0, 'top1_pruned': dense,
             'top1_finetuned': dense}]
    for method in args.methods:
        torch.manual_seed(args.seed)
        small, ratio = prune(method, model, train_loader, args.flops_ratio,
                             args.seed, args.metric_batches)
        right_after = top1(small, test_loader)
        train_one_cycle(small, train_loader, args.finetune_epochs, 0.05,
                        method)
        rows.append({'method': method, 'flops_ratio': round(ratio, 4),
                     'top1_pruned': right_after,
                     'top1_finetuned': top1(small, test_loader)})
        print(f"{method}: {rows[-1]}", flush=True)
    budget = {k: getattr(args, k) for k in (
        'depth', 'baseline_epochs', 'finetune_epochs', 'flops_ratio',
        'metric_batches', 'seed')}
    budget.update(train_samples=len(train_loader.dataset),
                  test_samples=len(test_loader.dataset),
                  seconds=round(time.time() - t0, 1))
    atomic_write_json(osp.join(args.out_dir, 'accuracy_at_flops.json'),
                      {'budget': budget, 'rows': rows}, indent=2)
    atomic_write_csv(osp.join(args.out_dir, 'accuracy_at_flops.csv'), rows)
    print(f'\nbudget: {budget}')
    print(f"{'method':<12} {'FLOPs':>7} {'top-1 pruned+BN':>16} "
          f"{'top-1 fine-tuned':>17} {'vs dense':>9}")
    for r in rows:
        print(f"{r['method']:<12} {r['flops_ratio']:>7.3f} "
              f"{r['top1_pruned']:>16.2f} {r['top1_finetuned']:>17.2f} "
              f"{r['top1_finetuned'] - dense:>+9.2f}")
    return rows


if __name__ == '__main__':
    main()
