"""Depth vs width at the same FLOPs target: layer pruning, channel pruning,
both, and block merging.

One trained ResNet (CIFAR layout) on Fashion-MNIST. Each variant compresses
a copy, recalibrates BN, is exported (physically sliced / blocks replaced by
identity or merged), fine-tuned with the same budget, and its CPU latency is
measured with BN folded (the dense reference is folded too):

* ``depth``: remove the residual blocks with the lowest ``--block-metric``
  score (default 1 - linear CKA) until ``--flops-ratio`` of the MACs is met;
* ``width``: channel pruning (``--channel-metric``, one global threshold)
  to the target;
* ``both``: depth to ``sqrt(ratio)``, then width to ``sqrt(ratio)`` of the
  shallower model;
* ``merge``: ``depth`` planned together with block merging
  (``mmrazor_ext.graph.merge``): blocks with ``merge_error <=
  --merge-tol`` are composed into one conv and the MACs that adds are paid
  for by removing more blocks (``plan_fusion``); when no block qualifies
  it is the ``depth`` model and is not trained again;
* ``merge_only``: no removal, the ``--merge-max`` blocks with the lowest
  merge error are merged whatever their error: what merging costs in MACs,
  latency and accuracy.

Latency is measured after all variants are built, in ``--latency-rounds``
rounds; each round times every model (dense included) back to back, so the
speed-ups are paired per round (median of the per-round ratios) and a load
change on a shared machine hits dense and variant alike.

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
        --latency-repeats 3 --latency-rounds 1
``--baseline PATH`` reuses a state dict trained with the same recipe, e.g.
``accuracy_at_flops.py``'s ``baseline_r56_2e_20000.pth`` (same seed, data
order, initialisation and ``mmrazor_ext.apis.benchmark.cached_baseline`` as
this script's own).
"""
import argparse
import copy
import math
import statistics
import time

import torch

from mmrazor_ext.apis.benchmark import (
    add_baseline_args,
    baseline_from_args,
    top1,
    train_one_cycle,
)
from mmrazor_ext.utils.tables import format_table, write_json_csv

VARIANTS = ('depth', 'width', 'both', 'merge', 'merge_only')
X1 = torch.randn(1, 1, 28, 28)


def block_plan(model, batches, metric, merge_batches=0):
    """Block scores, MACs and (if ``merge_batches``) merge statistics of
    ``model``: the inputs of :func:`~mmrazor_ext.algorithms.plan_fusion`."""
    from mmrazor_ext.algorithms import block_flops, merge_flops_delta
    from mmrazor_ext.estimators import get_model_complexity
    from mmrazor_ext.graph import MergeMeter, find_blocks, find_mergeable
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
    plan = {'blocks': blocks, 'scores': m(blocks, model, contents),
            'saved': block_flops(model, blocks, X1),
            'total': get_model_complexity(model, X1)['flops']}
    if merge_batches:
        names = [n for n, i in find_mergeable(blocks).items() if i.mergeable]
        meter = MergeMeter(model, blocks, names)
        for x, _ in batches[:merge_batches]:
            meter.update(x)
        plan['merge_stats'] = meter.statistics()
        plan['merge_delta'] = merge_flops_delta(model, blocks, names)
    return plan


def compress_depth(model, plan, target, merge=None):
    """Remove (and merge) blocks of a copy of ``model`` as planned."""
    from mmrazor_ext.algorithms import plan_fusion
    from mmrazor_ext.graph import merge_blocks, remove_blocks
    mplan = None
    if merge is not None:
        mplan = dict(merge, delta=plan['merge_delta'], errors={
            n: s['merge_error'] for n, s in plan['merge_stats'].items()})
    removed, merged = plan_fusion(plan['scores'], plan['blocks'].removable,
                                  plan['saved'], plan['total'], target, mplan)
    small = remove_blocks(model, removed, plan['blocks'])
    if merged:
        small = merge_blocks(small, merged, example_inputs=X1, inplace=True)
    return small, removed, merged


def prune_width(model, batches, ratio, metric):
    """Channel-prune a copy to ``ratio`` of its MACs; the sliced model."""
    from mmrazor_ext.metrics import FeatureCollector
    from mmrazor_ext.pruners import ChannelPruner
    model = copy.deepcopy(model).eval()
    pruner = ChannelPruner(model, X1, divisor=1)  # README rows: free widths
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


def paired_latency(models, x, rounds, repeats, threads):
    """Median latency of each model and its paired speed-up vs ``'dense'``.

    Every round times all models back to back (order rotated per round);
    the speed-up is the median over rounds of dense / model in that round.
    """
    from mmrazor_ext.estimators import measure_latency
    names = list(models)
    times = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            times[n].append(measure_latency(models[n], x, warmup=2,
                                            repeats=repeats,
                                            num_threads=threads))
        print(f'latency round {r + 1}/{rounds}: ' + ', '.join(
            f'{n} {times[n][-1] * 1e3:.1f} ms' for n in names), flush=True)
    return {n: (statistics.median(times[n]), statistics.median(
        d / t for d, t in zip(times['dense'], times[n]))) for n in names}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_baseline_args(p)
    p.add_argument('--finetune-epochs', type=int, default=1)
    p.add_argument('--finetune-variants', nargs='+', default=None,
                   choices=VARIANTS,
                   help='variants to fine-tune (default: all); the others '
                   'report top-1 right after compression + BN only')
    p.add_argument('--flops-ratio', type=float, default=0.5)
    p.add_argument('--variants', nargs='+', default=list(VARIANTS),
                   choices=VARIANTS)
    p.add_argument('--block-metric', default='block_cka')
    p.add_argument('--channel-metric', default='l1',
                   choices=('l1', 'l2', 'bn_scale', 'cdp'))
    p.add_argument('--metric-batches', type=int, default=20)
    p.add_argument('--merge-tol', type=float, default=0.25,
                   help='linear_tol of the merge variant')
    p.add_argument('--merge-max', type=int, default=8,
                   help='blocks merged by the merge_only variant')
    p.add_argument('--merge-batches', type=int, default=8,
                   help='calibration batches of the merge error')
    p.add_argument('--latency-batch', type=int, default=64)
    p.add_argument('--latency-repeats', type=int, default=10,
                   help='timed runs per model per round')
    p.add_argument('--latency-rounds', type=int, default=5)
    p.add_argument('--threads', type=int, default=None,
                   help='intra-op threads for the latency measurement')
    p.add_argument('--out-dir', default='work_dirs/bench_depth_vs_width')
    args = p.parse_args(argv)
    from mmrazor_ext.estimators import get_model_complexity
    from mmrazor_ext.graph import fold_bn
    from mmrazor_ext.utils.evaluation import recalibrate_bn
    t0 = time.time()
    model, train_loader, test_loader = baseline_from_args(args)
    dense_flops = get_model_complexity(model, X1)['flops']
    dense = top1(model, test_loader)
    print(f'dense: top-1 {dense:.2f}, {dense_flops / 1e6:.2f} M MACs',
          flush=True)
    batches = [b for _, b in zip(range(args.metric_batches), train_loader)]
    need_merge = {'merge', 'merge_only'} & set(args.variants)
    t1 = time.time()
    plan = block_plan(model, batches, args.block_metric,
                      args.merge_batches if need_merge else 0)
    merge_stats = plan.get('merge_stats', {})
    if merge_stats:
        errs = sorted(s['merge_error'] for s in merge_stats.values())
        print(f'merge errors of {len(errs)} mergeable blocks '
              f'({time.time() - t1:.0f} s): min {errs[0]:.3f}, median '
              f'{statistics.median(errs):.3f}, max {errs[-1]:.3f}; '
              f'<= {args.merge_tol}: {sum(e <= args.merge_tol for e in errs)}'
              '; mean changed fraction of the branch ReLUs '
              f'{statistics.mean(s["changed"] for s in merge_stats.values()):.3f}',
              flush=True)
    rows = [{'variant': 'dense', 'blocks_removed': 0, 'blocks_merged': 0,
             'flops_ratio': 1.0, 'top1_pruned': dense,
             'top1_finetuned': dense}]
    models = {'dense': fold_bn(model, X1)}
    built = {}
    for variant in args.variants:
        torch.manual_seed(args.seed)
        small, removed, merged = model, [], []
        ratio = args.flops_ratio if variant != 'both' else \
            math.sqrt(args.flops_ratio)
        target = dict(mode='flops', ratio=ratio)
        if variant in ('depth', 'both'):
            small, removed, merged = compress_depth(model, plan, target)
        elif variant == 'merge':
            small, removed, merged = compress_depth(
                model, plan, target, dict(linear_tol=args.merge_tol))
            if not merged and 'depth' in built:
                print(f'merge: no block has merge_error <= {args.merge_tol}; '
                      'the plan is the depth variant (not trained again)',
                      flush=True)
                rows.append(dict(built['depth'], variant='merge'))
                models['merge'] = models['depth']
                continue
        elif variant == 'merge_only':
            small, removed, merged = compress_depth(
                model, plan, dict(mode='num_blocks', num=0),
                dict(linear_tol=float('inf'), max_blocks=args.merge_max))
        if variant in ('width', 'both'):
            small = prune_width(small, batches, ratio, args.channel_metric)
        recalibrate_bn(small, batches, len(batches))
        right_after = top1(small, test_loader)
        tuned = args.finetune_epochs > 0 and (
            args.finetune_variants is None
            or variant in args.finetune_variants)
        if tuned:
            train_one_cycle(small, train_loader, args.finetune_epochs, 0.05,
                            variant)
        flops = get_model_complexity(small, X1)['flops']
        row = {'variant': variant, 'blocks_removed': len(removed),
               'blocks_merged': len(merged),
               'flops_ratio': round(flops / dense_flops, 4),
               'top1_pruned': right_after,
               'top1_finetuned': top1(small, test_loader) if tuned
               else None}
        rows.append(row)
        built[variant] = row
        models[variant] = fold_bn(small.eval(), X1)
        print(f'{variant}: {row} removed={removed} merged={merged} '
              f'({time.time() - t0:.0f} s)', flush=True)
    xl = torch.randn(args.latency_batch, 1, 28, 28)
    lat = paired_latency(models, xl, args.latency_rounds,
                         args.latency_repeats, args.threads)
    for r in rows:
        ms, speedup = lat[r['variant']]
        red = 1.0 / r['flops_ratio']
        r.update(latency_ms=round(ms * 1e3, 3),
                 latency_speedup=round(speedup, 3),
                 flops_reduction=round(red, 3),
                 speedup_per_flops=round(speedup / red, 3))
    budget = {k: getattr(args, k) for k in (
        'depth', 'baseline', 'baseline_epochs', 'finetune_epochs',
        'finetune_variants', 'flops_ratio', 'block_metric', 'channel_metric',
        'metric_batches',
        'merge_tol', 'merge_max', 'merge_batches', 'latency_batch',
        'latency_repeats', 'latency_rounds', 'threads', 'seed')}
    budget.update(train_samples=len(train_loader.dataset),
                  test_samples=len(test_loader.dataset),
                  torch_threads=args.threads or torch.get_num_threads(),
                  seconds=round(time.time() - t0, 1))
    write_json_csv(args.out_dir, 'depth_vs_width', {
        'budget': budget, 'rows': rows, 'merge_stats': merge_stats}, rows)
    print(f'\nbudget: {budget}')
    print(format_table(rows, [
        ('variant', 'variant', '<10'), ('rm', 'blocks_removed', '>3'),
        ('mg', 'blocks_merged', '>3'), ('FLOPs', 'flops_ratio', '>6.3f'),
        ('top-1 BN', 'top1_pruned', '>9.2f'),
        ('top-1 ft', 'top1_finetuned', '>9.2f'),
        ('ms', 'latency_ms', '>8.2f'), ('speedup', 'latency_speedup', '>8.2f'),
        ('FLOPs red.', 'flops_reduction', '>10.2f'),
        ('spd/FLOPs', 'speedup_per_flops', '>9.2f')]))
    return rows


if __name__ == '__main__':
    main()
