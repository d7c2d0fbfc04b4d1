"""Graph-build time, FLOPs / params and CPU latency of ~2x-pruned models.

For each model: build the ChannelPruner (timed), prune to ``--flops-ratio``
of the FLOPs with L1 scores, export, and time dense vs exported forward
passes (eval, batch ``--batch``, median of ``--repeats`` after warm-up).
Dense and pruned runs are interleaved (one forward each, in turn) so that
background load affects both alike, and freed memory stays in the process
(``--allocator retain``) so that glibc's page faults, which follow
activation bytes rather than MACs, are not timed. The last line is
*latency speed-up / FLOPs reduction* (1.0 = the FLOPs saving fully turns
into speed).

``--divisors 1 8 auto`` and ``--latency-target 0.5`` instead compare
several pruned variants of each model against the dense one in one
interleaved run (:func:`bench_variants`): one per divisor at the FLOPs
target, and one per latency target and ``--latency-sampling`` (widths
chosen from the measured per-layer latency table, then corrected by timing
the exported subnet unless ``--no-calibrate``,
:mod:`mmrazor_ext.pruners.latency_target`).

Example::

    python tools/benchmark/pruning_speed.py --models resnet56 resnet50
    python tools/benchmark/pruning_speed.py --vs-torch-pruning --out b.json
    python tools/benchmark/pruning_speed.py --models resnet50 --batch 8 \
        --divisors 1 8 auto --latency-target 0.5 --threads 1
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from mmrazor_ext.utils import atomic_write_json, retain_freed_memory


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
    pruner.clear_subnet()
    dense = dense_baseline(model, x1, args.fuse_bn)
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


def _divisor(v: str):
    return v if v == 'auto' else int(v)


def _interleaved(models: dict, x: torch.Tensor, args) -> dict:
    """Median seconds per model, one forward each in turn per round so
    that background load hits all of them alike."""
    from mmrazor_ext.estimators import measure_latency
    times = {k: [] for k in models}
    for m in models.values():
        measure_latency(m, x, warmup=args.warmup, repeats=1,
                        num_threads=args.threads, clock=args.clock)
    for _ in range(args.repeats):
        for k, m in models.items():
            times[k].append(measure_latency(m, x, warmup=0, repeats=1,
                                            num_threads=args.threads,
                                            clock=args.clock))
    return {k: statistics.median(v) for k, v in times.items()}


def dense_baseline(model, x1: torch.Tensor, fuse_bn: bool):
    """The dense model in the form its pruned variants are timed in:
    with ``fuse_bn``, BN folded into the convs as export folds it."""
    if not fuse_bn:
        return model
    from mmrazor_ext.pruners import ChannelPruner
    return ChannelPruner(model, x1).export(fuse_bn=True)


def bench_variants(name: str, args) -> list[dict]:
    """Dense vs one pruned model per ``--divisors`` entry (FLOPs target)
    and per ``--latency-target`` (latency keep ratio), timed together."""
    from mmrazor_ext.estimators import get_model_complexity
    from mmrazor_ext.pruners import ChannelPruner
    torch.manual_seed(0)
    model, size = build(name, args.size.get(name))
    model.eval()
    x1 = torch.randn(1, 3, size, size)
    macs0 = get_model_complexity(model, x1)['flops']
    models, rows = {'dense': dense_baseline(model, x1, args.fuse_bn)}, {}
    plans = [('divisor', d, None) for d in args.divisors or ()] + \
        [('latency', r, m) for r in args.latency_target or ()
         for m in args.latency_sampling]
    for kind, value, sampling in plans:
        div = value if kind == 'divisor' else args.divisor
        pruner = ChannelPruner(model, x1, divisor=div)
        scores = pruner.get_metric_local('l1')
        row = {'model': name, 'input': size, 'batch': args.batch,
               'divisor': div}
        if kind == 'divisor':
            label = f'divisor={div}'
            subnet = pruner.sample_subnet_for_flops(
                args.flops_ratio, scores, mode=args.mode, verify=False)
        else:
            label = f'latency={value}' + (
                f'/{sampling}' if len(args.latency_sampling) > 1 else '')
            t0 = time.perf_counter()
            subnet = pruner.sample_subnet_for_latency(
                value, scores, mode=sampling, batch=args.batch,
                grid=args.latency_grid, num_threads=args.threads,
                cache_dir=args.latency_cache_dir, clock=args.clock,
                calibrate=not args.no_calibrate)
            rep = pruner.last_latency_report
            row.update(latency_target=value, target_speedup=1 / value,
                       sampling=sampling, table_s=time.perf_counter() - t0,
                       table_from_cache=rep['table_from_cache'],
                       estimated_ratio=rep['estimated_ratio'],
                       calibration=rep.get('calibration'),
                       calibrated_ratio=rep.get('measured_ratio'))
        pruner.set_subnet(subnet)
        models[label] = pruner.export(fuse_bn=args.fuse_bn)
        pruner.clear_subnet()
        row['flops_reduction'] = macs0 / get_model_complexity(
            models[label], x1)['flops']
        rows[label] = row
    lat = _interleaved(models, torch.randn(args.batch, 3, size, size), args)
    for label, row in rows.items():
        row.update(variant=label, latency_s=lat['dense'],
                   latency_pruned_s=lat[label],
                   speedup=lat['dense'] / lat[label])
        row['speedup_per_flops'] = row['speedup'] / row['flops_reduction']
        if 'target_speedup' in row:
            row['speedup_vs_target'] = row['speedup'] / row['target_speedup']
    return list(rows.values())


def print_variants(rows: list[dict], args) -> None:
    r0 = rows[0]
    print(f"{r0['model']} @{r0['input']} (batch {r0['batch']}, "
          f"{args.repeats} interleaved runs, "
          f"{args.threads or torch.get_num_threads()} threads, "
          f"{args.clock} clock): dense "
          f"{r0['latency_s'] * 1e3:.1f} ms")
    print(f"  {'variant':<24}{'MACs red.':>10}{'speed-up':>10}"
          f"{'speed-up/MACs':>15}{'target':>8}{'vs target':>11}"
          f"{'calib.':>8}")
    for r in rows:
        tgt = f"{r['target_speedup']:.2f}x" if 'target_speedup' in r else ''
        vs = f"{r['speedup_vs_target']:.2f}" if 'target_speedup' in r \
            else ''
        # the closed loop's own (fastest-run) speed-up, when it ran
        cal = f"{1 / r['calibrated_ratio']:.2f}x" \
            if r.get('calibrated_ratio') else ''
        print(f"  {r['variant']:<24}{r['flops_reduction']:>9.2f}x"
              f"{r['speedup']:>9.2f}x{r['speedup_per_flops']:>15.2f}"
              f"{tgt:>8}{vs:>11}{cal:>8}", flush=True)
    print()


#: models of ``--vs-torch-pruning`` when ``--models`` is not given
VS_TP_MODELS = ['resnet56', 'resnet18', 'resnet50', 'mobilenet_v2',
                'efficientnet_b0', 'convnext_tiny', 'densenet121',
                'regnet_x_400mf', 'regnet_y_400mf']


def vs_torch_pruning(name: str, args) -> dict:
    """Graph-build time of ``ChannelPruner`` vs Torch-Pruning's, same process.

    Timed per round, in this order: ``ChannelPruner(model, x)`` (trace,
    channel analysis, spaces); Torch-Pruning's pruner construction
    ``MetaPruner(model, x, MagnitudeImportance(1))`` (what a Torch-Pruning
    user pays: ``DependencyGraph.build_dependency`` plus the enumeration of
    all groups, ``get_all_groups``, it does to count channels); and
    ``DependencyGraph().build_dependency(model, example_inputs=x)`` alone.
    One untimed warm-up round, then ``--rounds`` rounds; medians reported.
    ``--clock cpu`` times process CPU time (with ``--threads 1``: what the
    builds cost, whatever else runs on the machine). Neither build changes
    the model.
    """
    import torch_pruning as tp

    from mmrazor_ext.pruners import ChannelPruner
    torch.manual_seed(0)
    model, size = build(name, args.size.get(name))
    model.eval()
    x = torch.randn(1, 3, size, size)

    def ours():
        ChannelPruner(model, x)

    def tp_pruner():
        tp.pruner.MetaPruner(model, x,
                             importance=tp.importance.MagnitudeImportance(p=1),
                             pruning_ratio=0.5)

    def tp_graph():
        tp.DependencyGraph().build_dependency(model, example_inputs=x)

    calls = {'ours': ours, 'tp_pruner': tp_pruner, 'tp_graph': tp_graph}
    times = {k: [] for k in calls}
    clock = time.process_time if args.clock == 'cpu' else time.perf_counter
    old_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or 2)
    try:
        for r in range(args.rounds + 1):  # round 0: warm-up
            for k, fn in calls.items():
                t0 = clock()
                fn()
                if r:
                    times[k].append(clock() - t0)
    finally:
        torch.set_num_threads(old_threads)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {'model': name, 'input': size, 'rounds': args.rounds,
            'threads': args.threads or 2, 'clock': args.clock,
            'ours_s': med['ours'], 'tp_pruner_s': med['tp_pruner'],
            'tp_graph_s': med['tp_graph'],
            'ratio': med['ours'] / med['tp_pruner'],
            'ratio_graph_only': med['ours'] / med['tp_graph'],
            'times_s': times}


def run_vs_torch_pruning(args) -> list[dict]:
    """``--vs-torch-pruning``: one row per model, printed as they come."""
    try:
        import torch_pruning  # noqa: F401
    except ImportError as e:
        raise SystemExit('--vs-torch-pruning needs torch-pruning '
                         '(pip install torch-pruning)') from e
    rows = []
    print(f"{'model':18s} {'ours ms':>9s} {'TP pruner':>10s} "
          f"{'TP graph':>9s} {'ours/TP':>8s} {'ours/graph':>10s}")
    for name in args.models or VS_TP_MODELS:
        r = vs_torch_pruning(name, args)
        rows.append(r)
        print(f"{name:18s} {r['ours_s'] * 1e3:9.1f} "
              f"{r['tp_pruner_s'] * 1e3:10.1f} {r['tp_graph_s'] * 1e3:9.1f} "
              f"{r['ratio']:8.2f} {r['ratio_graph_only']:10.2f}", flush=True)
    ratios = [r['ratio'] for r in rows]
    print(f'median ours/TP over {len(rows)} models: '
          f'{statistics.median(ratios):.2f}, worst {max(ratios):.2f} '
          f"({rows[ratios.index(max(ratios))]['model']})")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--models', nargs='+', default=None,
                   help='default: resnet56 resnet50 (--vs-torch-pruning: '
                   'VS_TP_MODELS)')
    p.add_argument('--vs-torch-pruning', action='store_true',
                   help='only time the graph build against Torch-Pruning '
                   "(same process, alternating rounds, --threads default 2)")
    p.add_argument('--rounds', type=int, default=7,
                   help='timed rounds per model of --vs-torch-pruning')
    p.add_argument('--flops-ratio', type=float, default=0.5,
                   help='kept FLOPs fraction (0.5 = 2x fewer MACs)')
    p.add_argument('--mode', default='uniform', choices=['uniform', 'global'])
    # the pruner's default ('auto': 16 / 8 by space width,
    # mmrazor_ext.pruners.sampling.AUTO_DIVISOR_RULE); --divisors compares
    # several side by side
    p.add_argument('--divisor', type=_divisor, default='auto')
    p.add_argument('--divisors', nargs='+', type=_divisor, default=None,
                   metavar='D', help="compare these divisors (int or "
                   "'auto') in one interleaved run")
    p.add_argument('--latency-target', nargs='+', type=float, default=None,
                   metavar='RATIO', help='also prune to these latency keep '
                   'ratios (0.5 = 2x faster), from a per-layer latency '
                   'table at --batch')
    p.add_argument('--latency-sampling', nargs='+', default=['efficient'],
                   choices=['efficient', 'uniform', 'global'],
                   help='how --latency-target chooses widths (several: one '
                   'variant each)')
    p.add_argument('--no-calibrate', action='store_true',
                   help='--latency-target: widths from the table alone, '
                   'without timing the exported subnet (closed loop)')
    p.add_argument('--latency-grid', type=int, default=8,
                   help='latency table widths per layer side (1/N steps)')
    p.add_argument('--latency-cache-dir', default='work_dirs/latency_tables')
    p.add_argument('--clock', default='wall', choices=['wall', 'cpu'],
                   help="with --divisors / --latency-target / "
                   "--vs-torch-pruning: 'cpu' times "
                   'process CPU time (needs --threads 1), unaffected by '
                   'other jobs on a shared machine')
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
    p.add_argument('--allocator', default='retain',
                   choices=['retain', 'system'],
                   help="'retain' (default): keep freed memory in the "
                   'process, as caching allocators do, so that timings are '
                   "not page faults (mmrazor_ext.utils.allocator); 'system':"
                   " the C library's default")
    p.add_argument('--out', help='also write the rows as JSON')
    args = p.parse_args(argv)
    if args.allocator == 'retain' and not retain_freed_memory():
        print('allocator: not glibc, left as it is')
    print(f'allocator: {args.allocator}', flush=True)
    args.size = {k: int(v) for k, v in (s.split('=') for s in args.size)}
    if args.vs_torch_pruning:
        rows = run_vs_torch_pruning(args)
        if args.out:
            atomic_write_json(args.out, rows, indent=1)
        return 0
    args.models = args.models or ['resnet56', 'resnet50']
    rows = []
    for name in args.models:
        if args.divisors or args.latency_target:
            variants = bench_variants(name, args)
            print_variants(variants, args)
            rows.extend(variants)
            continue
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
