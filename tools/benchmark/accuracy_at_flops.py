"""Top-1 of pruning recipes at equal MACs budgets, side by side (issue 15).

Protocol: one ResNet (CIFAR layout, ``--depth``, default 56) trained on the
whole Fashion-MNIST training set with the 3-epoch one-cycle recipe (cached
in ``--out-dir``); for every MACs target (``--targets``, default 50 % and
21.7 %) every method prunes a copy, is exported (physically sliced) and
fine-tuned one epoch with the same one-cycle schedule. Methods:

* ``uniform_l1`` -- Torch-Pruning's default recipe: L1, the same ratio in
  every space; ``random`` -- random channels, same ratio everywhere;
* ``l1_global``, ``cdp``, ``taylor`` -- one global threshold over
  per-space normalised scores;
* ``uniform_l1_recon`` -- uniform L1 plus least-squares reconstruction;
* ``candidate`` -- the candidate default: the best metric
  (``--candidate-metric``; ``auto``: the global metric with the best top-1
  after BN recalibration at that target), sensitivity allocation
  (:func:`~mmrazor_ext.search.sensitivity.allocate_by_sensitivity`) and
  reconstruction (:meth:`ChannelPruner.reconstruct`).

Columns: MACs ratio, top-1 right after pruning (stale BN), after BN
recalibration, after reconstruction (methods that reconstruct), after
fine-tuning, and the minutes each method took (pruning, calibration and
fine-tuning). Every method uses the same calibration batches (the first
``--metric-batches`` training batches). Writes ``accuracy_at_flops.json``,
``.csv`` and ``.md`` to ``--out-dir``; ``rows_partial.json`` there keeps
every finished row, so a killed run started again with the same flags
skips the rows it has (``--fresh`` ignores them).

    python tools/benchmark/accuracy_at_flops.py            # issue 15, hours
    python tools/benchmark/accuracy_at_flops.py --depth 20 --epochs 1 \\
        --train-samples 2000 --test-samples 1000 --targets 0.5   # smoke
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
from mmrazor_ext.pruners.sampling import check_divisor
from mmrazor_ext.utils import atomic_write_json, atomic_write_text
from mmrazor_ext.utils.tables import atomic_write_csv

GLOBAL_METRICS = ('l1_global', 'cdp', 'taylor')
METHODS = ('uniform_l1', 'random', *GLOBAL_METRICS, 'uniform_l1_recon',
           'candidate')
COLUMNS = ('top1_pruned', 'top1_bn', 'top1_reconstructed', 'top1_finetuned')
HEADER = ('target', 'method', 'metric', 'sampling', 'macs_ratio', *COLUMNS,
          'minutes', 'recon_seconds')


def scores_of(metric, pruner, model, batches, seed):
    """``{space: scores}`` of ``'l1' | 'cdp' | 'taylor' | 'random'``."""
    from mmrazor_ext.metrics import FeatureCollector, TaylorAccumulator
    if metric == 'cdp':
        col = FeatureCollector(pruner.graph, by='class', num_classes=10)
        for x, y in batches:
            col.update(x, y)
        return pruner.get_metric_local('cdp', col.documents())
    if metric == 'taylor':
        acc = TaylorAccumulator(pruner.graph, model)
        return pruner.get_metric_local('taylor', acc.run(
            batches, lambda b: F.cross_entropy(model(b[0]), b[1])))
    if metric == 'random':
        g = torch.Generator().manual_seed(seed)
        return {n: torch.rand(s.num_channels, generator=g)
                for n, s in pruner.channel_spaces.items()}
    return pruner.get_metric_local('l1')


def recipe(method, candidate_metric):
    """``(metric, sampling, reconstruct)`` of a method."""
    if method == 'candidate':
        return candidate_metric, 'sensitivity', True
    if method in GLOBAL_METRICS:
        return method.replace('_global', ''), 'global', False
    if method == 'random':
        return 'random', 'uniform', False
    return 'l1', 'uniform', method == 'uniform_l1_recon'


def run_method(method, baseline, calib, train_loader, test_loader, target,
               args, candidate_metric='l1'):
    """One row: prune, measure, reconstruct, fine-tune."""
    from mmrazor_ext.pruners import ChannelPruner
    from mmrazor_ext.search.sensitivity import allocate_by_sensitivity
    from mmrazor_ext.utils import recalibrate_bn
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    metric, sampling, recon = recipe(method, candidate_metric)
    model = copy.deepcopy(baseline).eval()
    pruner = ChannelPruner(model, torch.randn(1, 1, 28, 28),
                           divisor=args.divisor)
    scores = scores_of(metric, pruner, model, calib, args.seed)
    if sampling == 'sensitivity':
        subnet, _ = allocate_by_sensitivity(
            pruner, scores, target, calib, step=args.sens_step,
            bn_batches=args.sens_bn_batches,
            eval_batches=args.sens_eval_batches, seed=args.seed)
    else:
        subnet = pruner.sample_subnet_for_flops(target, scores,
                                                mode=sampling)
    pruner.set_subnet(subnet)
    row = {'target': target, 'method': method,
           'metric': None if metric == 'random' else metric,
           'sampling': sampling,
           'macs_ratio': round(pruner.estimate_flops(subnet)
                               / pruner.original_flops, 4),
           'top1_pruned': top1(model, test_loader)}
    with_bn = copy.deepcopy(model)  # BN only, for the column
    recalibrate_bn(with_bn, calib, len(calib))
    row['top1_bn'] = top1(with_bn, test_loader)
    del with_bn
    row['top1_reconstructed'] = row['recon_seconds'] = None
    if recon:
        rep = pruner.reconstruct(calib, num_batches=args.recon_batches)
        row['top1_reconstructed'] = top1(model, test_loader)
        row['recon_seconds'] = round(rep['seconds'], 1)
    else:
        recalibrate_bn(model, calib, len(calib))
    small = pruner.export()
    train_one_cycle(small, train_loader, args.finetune_epochs,
                    args.finetune_lr, f'{method}@{target}')
    row['top1_finetuned'] = top1(small, test_loader)
    row['minutes'] = round((time.perf_counter() - t0) / 60, 2)
    return row


def finished_rows(path, budget):
    """``{(target, method): row}`` saved by an earlier run with the same
    budget; an empty dict when there is none or its budget differs."""
    import json
    if not osp.exists(path):
        return {}
    with open(path) as f:
        saved = json.load(f)
    if saved.get('budget') != json.loads(json.dumps(budget)):
        print(f'{path}: written with another budget, not reused', flush=True)
        return {}
    return {(r['target'], r['method']): r for r in saved['rows']}


def markdown(rows, budget):
    """The rows as a markdown table (percentages, vs dense)."""
    dense = next(r['top1_finetuned'] for r in rows if r['method'] == 'dense')
    lines = [f"ResNet-{budget['depth']}, Fashion-MNIST "
             f"({budget['train_samples']} train / {budget['test_samples']} "
             f"test samples), baseline {budget['baseline_epochs']} epochs, "
             f"fine-tune {budget['finetune_epochs']} epoch(s); dense top-1 "
             f'{dense:.2f}', '',
             '| target | method | MACs | pruned | +BN | +recon | '
             'fine-tuned | vs dense | min |',
             '|---|---|---|---|---|---|---|---|---|']

    def fmt(v):
        return '' if v is None else f'{v:.2f}'
    for r in rows:
        if r['method'] == 'dense':
            continue
        lines.append(
            f"| {r['target']:.3f} | {r['method']} | {r['macs_ratio']:.3f} | "
            + ' | '.join(fmt(r[c]) for c in COLUMNS)
            + f" | {r['top1_finetuned'] - dense:+.2f} | {r['minutes']:.1f} |")
    return '\n'.join(lines) + '\n'


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_baseline_args(p)
    p.add_argument('--epochs', type=int, default=None,
                   help='shorthand: --baseline-epochs and --finetune-epochs')
    p.add_argument('--finetune-epochs', type=int, default=1)
    p.add_argument('--finetune-lr', type=float, default=0.05)
    p.add_argument('--targets', type=float, nargs='+', default=[0.5, 0.217],
                   help='MACs keep ratios')
    p.add_argument('--methods', nargs='+', default=list(METHODS),
                   choices=METHODS)
    p.add_argument('--candidate-metric', default='auto',
                   choices=('auto', 'l1', 'cdp', 'taylor'))
    p.add_argument('--metric-batches', type=int, default=20,
                   help='calibration batches (metrics, BN, sensitivity, '
                   'reconstruction)')
    p.add_argument('--recon-batches', type=int, default=20)
    p.add_argument('--sens-step', type=float, default=0.125)
    p.add_argument('--sens-bn-batches', type=int, default=5)
    p.add_argument('--sens-eval-batches', type=int, default=5)
    # 1 (free widths): the setting of the README rows, not the pruner's
    # default 'auto'; part of the budget, so a continued run never mixes
    p.add_argument('--divisor', default=1, type=check_divisor,
                   help="pruner divisor (int or 'auto'), default 1")
    p.add_argument('--out-dir', default='work_dirs/benchmark_accuracy_at_flops')
    p.add_argument('--fresh', action='store_true',
                   help='ignore rows finished by an earlier run')
    args = p.parse_args(argv)
    if args.epochs is not None:
        args.baseline_epochs = args.finetune_epochs = args.epochs
    t0 = time.time()
    baseline, train_loader, test_loader = baseline_from_args(args)
    dense = top1(baseline, test_loader)
    calib = [b for _, b in zip(range(args.metric_batches), train_loader)]
    rows = [{'target': 1.0, 'method': 'dense', 'metric': None,
             'sampling': None, 'macs_ratio': 1.0,
             **{c: dense for c in COLUMNS}, 'minutes': 0.0}]
    rows[0]['top1_reconstructed'] = rows[0]['recon_seconds'] = None
    budget = {k: getattr(args, k) for k in (
        'depth', 'baseline_epochs', 'finetune_epochs', 'finetune_lr',
        'targets', 'metric_batches', 'recon_batches', 'sens_step',
        'sens_bn_batches', 'sens_eval_batches', 'candidate_metric', 'seed',
        'divisor')}
    budget.update(train_samples=len(train_loader.dataset),
                  test_samples=len(test_loader.dataset))
    partial = osp.join(args.out_dir, 'rows_partial.json')
    done_rows = {} if args.fresh else finished_rows(partial, budget)
    # global metrics first: 'auto' picks the candidate's metric from them
    order = sorted(args.methods, key=lambda m: m == 'candidate')
    for target in args.targets:
        for method in order:
            if (target, method) in done_rows:
                rows.append(done_rows[(target, method)])
                print(f'{method}@{target}: kept from {partial}', flush=True)
                continue
            metric = args.candidate_metric
            if method == 'candidate' and metric == 'auto':
                done = [r for r in rows if r['target'] == target
                        and r['method'] in GLOBAL_METRICS]
                metric = max(done, key=lambda r: r['top1_bn'])['metric'] \
                    if done else 'l1'
            row = run_method(method, baseline, calib, train_loader,
                             test_loader, target, args, metric)
            rows.append(row)
            atomic_write_json(partial, {'budget': budget, 'rows': rows[1:]},
                              indent=2)
            print(f'{method}@{target}: {row}', flush=True)
    budget['minutes'] = round((time.time() - t0) / 60, 2)
    atomic_write_json(osp.join(args.out_dir, 'accuracy_at_flops.json'),
                      {'budget': budget, 'rows': rows}, indent=2)
    atomic_write_csv(osp.join(args.out_dir, 'accuracy_at_flops.csv'),
                     [{k: r.get(k) for k in HEADER} for r in rows], HEADER)
    table = markdown(rows, budget)
    atomic_write_text(osp.join(args.out_dir, 'accuracy_at_flops.md'), table)
    print(f'\nbudget: {budget}\n\n{table}')
    return rows


if __name__ == '__main__':
    main()
