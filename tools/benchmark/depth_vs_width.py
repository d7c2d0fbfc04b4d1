"""Depth vs width at the same FLOPs target: layer pruning, channel pruning,
both.

One trained ResNet (CIFAR layout) on Fashion-MNIST. Each variant compresses
a copy to ``--flops-ratio`` of the MACs, recalibrates BN, is exported
(physically sliced / blocks replaced by identity), fine-tuned with the same
budget, and its CPU latency is measured with BN folded (the dense reference
is folded too):

* ``depth``: remove the residual blocks with the lowest ``--block-metric``
  score (default 1 - linear CKA) until the target is met;
* ``width``: channel pruning (``--channel-metric``, one global threshold)
  to the target;
* ``both``: depth to ``sqrt(ratio)``, then width to ``sqrt(ratio)`` of the
  shallower model.

The issue's goal: the depth variant's latency speed-up is at least its FLOPs
reduction (column ``speedup_per_flops`` >= 1). Writes
``depth_vs_width.json`` / ``.csv`` to ``--out-dir``.

Budgets are flags; the full run (ResNet-56, 3 baseline epochs, 1 fine-tune
epoch, ~1.5 h on 2 free cores):
    python tools/benchmark/depth_vs_width.py --depth 56 \\
        --baseline-epochs 3 --finetune-epochs 1
Smoke run (seconds, numbers meaningless):
    python tools/benchmark/depth_vs_width.py --depth 20 --baseline-epochs 0 \\
        --finetune-epochs 0 --train-samples 256 --test-samples 256 \\
        --latency-repeats 3
"""
import argparse
import copy
import csv
import json
import math
import os
import os.path as osp
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

import torch  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from tools.benchmark.accuracy_at_flops import (  # noqa: E402
    load_fmnist,
    top1,
    train,
)

VARIANTS = ('depth', 'width', 'both')
X1 = torch.randn(1, 1, 28, 28)


def remove_depth(model, batches, ratio, metric):
    """Remove weakest blocks down to ``ratio`` of the MACs (a copy)."""
    from mmrazor_ext.algorithms import block_flops, select_blocks
    from mmrazor_ext.estimators import get_model_complexity
    from mmrazor_ext.graph import find_blocks, remove_blocks
    from mmrazor_ext.metrics import BlockFeatureCollector
    from mmrazor_ext.registry import METRICS
    blocks = find_blocks(model, X1)
    m = METRICS.get(metric)()
    contents = None
    if m.requires_features:
        col = BlockFeatureCollector(blocks)
        for x, _ in batches:
            col.update(x)
        contents = col.statistics()
    scores = m(blocks, model, contents)
    total = get_model_complexity(model, X1)['flops']
    chosen = select_blocks(scores, blocks.removable,
                           block_flops(model, blocks, X1), total,
                           dict(mode='flops', ratio=ratio))
    return remove_blocks(model, chosen, blocks), chosen


def prune_width(model, batches, ratio, metric):
    """Channel-prune a copy to ``ratio`` of its MACs; the sliced model."""
    from mmrazor_ext.metrics import FeatureCollector
    from mmrazor_ext.pruners import ChannelPruner
    model = copy.deepcopy(model).eval()
    pruner = ChannelPruner(model, X1)
    contents = None
    if metric == 'cdp':
        col = FeatureCollector(pruner.graph, by='class', num_classes=10)
        for x, y in batches:
            col.update(x, y)
        contents = col.documents()
    scores = pruner.get_metric_local(metric, contents)
    pruner.set_subnet(pruner.sample_subnet_for_flops(ratio, scores,
                                                     mode='global'))
    return pruner.export()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--depth', type=int, default=56)
    p.add_argument('--data-root', default='data/fashion_mnist')
    p.add_argument('--baseline-epochs', type=int, default=3)
    p.add_argument('--finetune-epochs', type=int, default=1)
    p.add_argument('--train-samples', type=int, default=None)
    p.add_argument('--test-samples', type=int, default=None)
    p.add_argument('--flops-ratio', type=float, default=0.5)
    p.add_argument('--variants', nargs='+', default=list(VARIANTS),
                   choices=VARIANTS)
    p.add_argument('--block-metric', default='block_cka')
    p.add_argument('--channel-metric', default='l1',
                   choices=('l1', 'l2', 'bn_scale', 'cdp'))
    p.add_argument('--metric-batches', type=int, default=20)
    p.add_argument('--batch-size', type=int, default=128)
    p.add_argument('--latency-batch', type=int, default=64)
    p.add_argument('--latency-repeats', type=int, default=30)
    p.add_argument('--threads', type=int, default=None,
                   help='intra-op threads for the latency measurement')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--out-dir', default='work_dirs/benchmark_depth_vs_width')
    args = p.parse_args(argv)
    from mmrazor_ext.engine.evaluation import recalibrate_bn
    from mmrazor_ext.estimators import get_model_complexity, measure_latency
    from mmrazor_ext.graph import fold_bn
    from mmrazor_ext.models import CifarResNet
    torch.manual_seed(args.seed)
    xs, ys = load_fmnist(args.data_root, 'train', args.train_samples)
    xt, yt = load_fmnist(args.data_root, 'test', args.test_samples)
    train_loader = DataLoader(TensorDataset(xs, ys), args.batch_size,
                              shuffle=True, drop_last=True)
    test_loader = DataLoader(TensorDataset(xt, yt), 512)
    os.makedirs(args.out_dir, exist_ok=True)
    ckpt = osp.join(args.out_dir, f'baseline_r{args.depth}_'
                    f'{args.baseline_epochs}e_{len(xs)}.pth')
    model = CifarResNet(args.depth, 10, 1)
    t0 = time.time()
    if osp.exists(ckpt):
        from mmrazor_ext.engine import safe_load
        model.load_state_dict(safe_load(ckpt))
    elif args.baseline_epochs > 0:
        train(model, train_loader, args.baseline_epochs, 0.2, 'baseline')
        torch.save(model.state_dict(), ckpt + '.tmp')
        os.replace(ckpt + '.tmp', ckpt)
    model.eval()
    xl = torch.randn(args.latency_batch, 1, 28, 28)

    def latency(m):
        return measure_latency(fold_bn(m.eval(), X1), xl,
                               repeats=args.latency_repeats,
                               num_threads=args.threads)
    dense_flops = get_model_complexity(model, X1)['flops']
    dense_lat = latency(model)
    dense = top1(model, test_loader)
    rows = [{'variant': 'dense', 'blocks_removed': 0, 'flops_ratio': 1.0,
             'top1_pruned': dense, 'top1_finetuned': dense,
             'latency_ms': round(dense_lat * 1e3, 3), 'latency_speedup': 1.0,
             'flops_reduction': 1.0, 'speedup_per_flops': 1.0}]
    batches = [b for _, b in zip(range(args.metric_batches), train_loader)]
    for variant in args.variants:
        torch.manual_seed(args.seed)
        small, removed = model, []
        r = args.flops_ratio if variant != 'both' else \
            math.sqrt(args.flops_ratio)
        if variant in ('depth', 'both'):
            small, removed = remove_depth(small, batches, r,
                                          args.block_metric)
        if variant in ('width', 'both'):
            small = prune_width(small, batches, r, args.channel_metric)
        recalibrate_bn(small, batches, len(batches))
        right_after = top1(small, test_loader)
        if args.finetune_epochs > 0:
            train(small, train_loader, args.finetune_epochs, 0.05, variant)
        flops = get_model_complexity(small, X1)['flops']
        lat = latency(small)
        red = dense_flops / flops
        rows.append({'variant': variant, 'blocks_removed': len(removed),
                     'flops_ratio': round(flops / dense_flops, 4),
                     'top1_pruned': right_after,
                     'top1_finetuned': top1(small, test_loader),
                     'latency_ms': round(lat * 1e3, 3),
                     'latency_speedup': round(dense_lat / lat, 3),
                     'flops_reduction': round(red, 3),
                     'speedup_per_flops': round(dense_lat / lat / red, 3)})
        print(f'{variant}: {rows[-1]}', flush=True)
    budget = {k: getattr(args, k) for k in (
        'depth', 'baseline_epochs', 'finetune_epochs', 'flops_ratio',
        'block_metric', 'channel_metric', 'metric_batches', 'latency_batch',
        'threads', 'seed')}
    budget.update(train_samples=len(xs), test_samples=len(xt),
                  torch_threads=args.threads or torch.get_num_threads(),
                  seconds=round(time.time() - t0, 1))
    out = osp.join(args.out_dir, 'depth_vs_width.json')
    with open(out + '.tmp', 'w') as f:
        json.dump({'budget': budget, 'rows': rows}, f, indent=2)
    os.replace(out + '.tmp', out)
    with open(osp.join(args.out_dir, 'depth_vs_width.csv'), 'w',
              newline='') as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f'\nbudget: {budget}')
    print(f"{'variant':<8} {'FLOPs':>6} {'top-1 BN':>9} {'top-1 ft':>9} "
          f"{'ms':>8} {'speedup':>8} {'FLOPs red.':>10} {'spd/FLOPs':>9}")
    for r in rows:
        print(f"{r['variant']:<8} {r['flops_ratio']:>6.3f} "
              f"{r['top1_pruned']:>9.2f} {r['top1_finetuned']:>9.2f} "
              f"{r['latency_ms']:>8.2f} {r['latency_speedup']:>8.2f} "
              f"{r['flops_reduction']:>10.2f} {r['speedup_per_flops']:>9.2f}")
    return rows


if __name__ == '__main__':
    main()
