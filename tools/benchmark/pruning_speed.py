"""Graph-build time, FLOPs / params and CPU latency of ~2x-pruned models.

For each model: build the ChannelPruner (timed), prune to ``--flops-ratio``
of the FLOPs with L1 scores, export, and time dense vs exported forward
passes (eval, batch ``--batch``, median of ``--repeats`` after warm-up).
Dense and pruned runs are interleaved (one forward each, in turn) so that
background load affects both alike. The last line is *latency speed-up /
FLOPs reduction* (1.0 = the FLOPs saving fully turns into speed).

Example::

    python tools/benchmark/pruning_speed.py --models resnet56 resnet50
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from mmrazor_ext.utils import atomic_write_json


def build(name: str, size: int | None):
    if name.startswith('resnet') and int(name[6:]) in (20, 32, 44, 56, 110):
        from mmrazor_ext.models import CifarResNet
        return CifarResNet(int(name[6:])), size or 32
    import torchvision
    return torchvision.models.get_model(name, weights=None), size or 224


def bench(name, args) -> dict:
    from mmrazor_ext.estimators import get_model_complexity, measure_latency
    from mmrazor_ext.pruners import ChannelPruner
    torch.manual_seed(0)
    model, size = build(name, args.size.get(name))
    model.eval()
    x1 = torch.randn(1, 3, size, size)
    builds = []
    for _ in range(args.build_repeats):
        t0 = time.perf_counter()
        pruner = ChannelPruner(model, x1, divisor=args.divisor)
        builds.append(time.perf_counter() - t0)
    scores = pruner.get_metric_local('l1')
    subnet = pruner.sample_subnet_for_flops(args.flops_ratio, scores,
                                            mode=args.mode)
    pruner.set_subnet(subnet)
    small = pruner.export(fuse_bn=args.fuse_bn)
    dense = pruner.export(fuse_bn=args.fuse_bn) if args.fuse_bn else None
    pruner.clear_subnet()
    if dense is None:
        dense = model
    c0 = get_model_complexity(model, x1)
    c1 = get_model_complexity(small, x1)
    flops_red = c0['flops'] / c1['flops']
    row = {'model': name, 'input': size, 'batch': args.batch,
           'build_s': statistics.median(builds),
           'flops': c0['flops'], 'flops_pruned': c1['flops'],
           'params': c0['params'], 'params_pruned': c1['params'],
           'flops_reduction': flops_red,
           'export_max_abs_diff':
               (pruner.last_export_report or {}).get('max_abs_diff')}
    if args.repeats < 1:  # structure only
        return row
    xb = torch.randn(args.batch, 3, size, size)
    # interleave dense / pruned runs so that both see the same background
    # load; each sample is one forward pass
    for m in (dense, small):
        measure_latency(m, xb, warmup=args.warmup, repeats=1,
                        num_threads=args.threads)
    t0, t1 = [], []
    for _ in range(args.repeats):
        t0.append(measure_latency(dense, xb, warmup=0, repeats=1,
                                  num_threads=args.threads))
        t1.append(measure_latency(small, xb, warmup=0, repeats=1,
                                  num_threads=args.threads))
    lat0, lat1 = statistics.median(t0), statistics.median(t1)
    speedup = lat0 / lat1
    row.update(latency_s=lat0, latency_pruned_s=lat1, speedup=speedup,
               speedup_per_flops=speedup / flops_red)
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--models', nargs='+', default=['resnet56', 'resnet50'])
    p.add_argument('--flops-ratio', type=float, default=0.5,
                   help='kept FLOPs fraction (0.5 = 2x fewer MACs)')
    p.add_argument('--mode', default='uniform', choices=['uniform', 'global'])
    # oneDNN's CPU convolutions work on 8/16-channel blocks: unaligned
    # widths run far below their FLOPs (measured on ResNet-56: speed-up /
    # FLOPs reduction 0.58 with divisor 1, 1.00 with divisor 8).
    p.add_argument('--divisor', type=int, default=8)
    p.add_argument('--batch', type=int, default=64)
    p.add_argument('--repeats', type=int, default=30,
                   help='timed runs per model (0: skip latency)')
    p.add_argument('--warmup', type=int, default=5)
    p.add_argument('--threads', type=int, default=None)
    p.add_argument('--build-repeats', type=int, default=5)
    p.add_argument('--fuse-bn', action='store_true',
                   help='fold BN into convs in both dense and pruned models')
    p.add_argument('--size', nargs='*', default=[], metavar='MODEL=SIZE',
                   help='input size per model (default 32 CIFAR, 224 else)')
    p.add_argument('--out', help='also write the rows as JSON')
    args = p.parse_args(argv)
    args.size = {k: int(v) for k, v in (s.split('=') for s in args.size)}
    rows = []
    for name in args.models:
        r = bench(name, args)
        rows.append(r)
        print(f"{r['model']} @{r['input']} (batch {r['batch']}, "
              f"{args.repeats} runs, {torch.get_num_threads()} threads)\n"
              f"  graph build      {r['build_s'] * 1e3:9.1f} ms\n"
              f"  FLOPs (MACs)     {r['flops'] / 1e6:9.2f} M -> "
              f"{r['flops_pruned'] / 1e6:9.2f} M  ({r['flops_reduction']:.2f}x"
              f" fewer)\n"
              f"  params           {r['params'] / 1e6:9.3f} M -> "
              f"{r['params_pruned'] / 1e6:9.3f} M", flush=True)
        if 'latency_s' not in r:
            print()
            continue
        print(f"  latency          {r['latency_s'] * 1e3:9.1f} ms -> "
              f"{r['latency_pruned_s'] * 1e3:9.1f} ms  ({r['speedup']:.2f}x "
              f"faster)\n"
              f"  speedup / FLOPs reduction = {r['speedup_per_flops']:.2f}\n",
              flush=True)
    if args.out:
        atomic_write_json(args.out, rows, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
