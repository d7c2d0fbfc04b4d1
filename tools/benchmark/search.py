"""Subnet search at ~2x fewer FLOPs: hybrid vs random vs uniform vs AutoSlim.

One ResNet-20 trained on real Fashion-MNIST. Every method looks for the
most accurate subnet with a FLOPs fraction in ``[lo, target]``
(``lo = target - --window``):

* ``hybrid``: NSGA-II over per-space keep ratios (grid 0.3 ... 1.0), channels
  chosen by L1, metric-guided global samples as the first candidates;
* ``random``: Optuna's random sampler over the same space, no seeds;
* ``uniform``: the same keep ratio in every space, bisected to the target
  (one candidate);
* ``autoslim``: sandwich-rule slimmable training of a copy of the baseline
  (``--autoslim-epochs``), then greedy slimming to the target.

Search candidates are scored with adaptive BN (K training batches) on a
held-out part of the training set; the chosen subnet of each method is then
scored the same way on the full 10k test set. ``hybrid`` and ``random``
evaluate the same number of candidates (``--candidates``); infeasible
candidates are rejected from their exact FLOPs without evaluation and
repeated ones are answered from the study. Writes ``search.json`` /
``search.csv`` to ``--out-dir``.

Full budget (2 free cores, ~25 min):
    python tools/benchmark/search.py --candidates 100
Smoke run:
    python tools/benchmark/search.py --train-samples 512 --candidates 4 \\
        --baseline-epochs 0 --autoslim-epochs 0 --bn-batches 1 \\
        --eval-samples 128 --test-samples 256
"""
import argparse
import copy
import json
import os.path as osp
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

from mmrazor_ext.apis.benchmark import (
    cached_baseline,
    load_fashion_mnist,
    split_batches,
)
from mmrazor_ext.utils.tables import format_table, write_json_csv

X1 = torch.randn(1, 1, 28, 28)


def search(kind, space, evaluator, args, lo):
    """Optuna search until ``args.candidates`` candidates were evaluated."""
    from mmrazor_ext.search import OptunaSearcher
    sampler = dict(type='nsga2', population_size=args.population, seed=0) \
        if kind == 'hybrid' else dict(type='random', seed=0)
    s = OptunaSearcher(space.names, space.grid, objectives=('top1',),
                       sampler=sampler, max_flops_ratio=args.flops_ratio,
                       min_flops_ratio=lo, study_name=kind)
    if kind == 'hybrid':
        s.enqueue(space.seed_candidates())

    def evaluate(params):
        return evaluator.evaluate(space.subnet_from_ratios(params))

    t0 = time.perf_counter()
    trials = 0
    while s.evaluated < args.candidates and trials < 100 * args.candidates:
        trials = len(s.completed()) + args.candidates - s.evaluated
        s.optimize(evaluate, space.flops_ratio, trials, progress=False)
    dt = time.perf_counter() - t0
    best = max(s.records(), key=lambda r: r['top1'])
    return (space.subnet_from_ratios(best['ratios']), s.evaluated, dt,
            len(s.completed()))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--data-root', default='data/fashion_mnist')
    p.add_argument('--train-samples', type=int, default=20000)
    p.add_argument('--heldout-samples', type=int, default=5000,
                   help='training images kept out of training (search '
                   'scoring draws --eval-samples from them)')
    p.add_argument('--eval-samples', type=int, default=1000)
    p.add_argument('--test-samples', type=int, default=10000)
    p.add_argument('--baseline-epochs', type=int, default=2)
    p.add_argument('--checkpoint', help='reuse a trained ResNet-20 (state '
                   'dict or tools/train.py checkpoint, e.g. the make-demo '
                   'baseline work_dirs/demo/baseline/epoch_1.pth)')
    p.add_argument('--candidates', type=int, default=100)
    p.add_argument('--population', type=int, default=20)
    p.add_argument('--flops-ratio', type=float, default=0.5)
    p.add_argument('--window', type=float, default=0.05)
    p.add_argument('--bn-batches', type=int, default=10)
    p.add_argument('--batch-size', type=int, default=128)
    p.add_argument('--autoslim-epochs', type=int, default=1)
    p.add_argument('--autoslim-step', type=float, default=0.2,
                   help='fraction of a space removed per greedy step')
    p.add_argument('--methods', default='hybrid,random,uniform,autoslim')
    p.add_argument('--out-dir', default='work_dirs/bench_search')
    args = p.parse_args(argv)

    from mmrazor_ext.pruners import ChannelPruner
    from mmrazor_ext.search import (
        AdaptiveBNEvaluator,
        KeepRatioSpace,
        greedy_slim,
        ratio_grid,
    )
    torch.manual_seed(0)
    x, y = load_fashion_mnist(args.data_root, 'train')
    n_hold = args.heldout_samples
    xh, yh = x[-n_hold:], y[-n_hold:]
    xt, yt = x[:min(args.train_samples, len(x) - n_hold)], \
        y[:min(args.train_samples, len(x) - n_hold)]
    xs, ys = load_fashion_mnist(args.data_root, 'test', args.test_samples)
    bs = args.batch_size
    loader = DataLoader(TensorDataset(xt, yt), batch_size=bs, shuffle=True)
    # a plain state dict, or a tools/train.py checkpoint
    model = cached_baseline(
        20, loader, args.baseline_epochs,
        args.checkpoint or osp.join(args.out_dir, 'baseline.pth'),
        must_exist=bool(args.checkpoint))
    bn_train = split_batches(xt[:args.bn_batches * bs],
                             yt[:args.bn_batches * bs], bs)
    heldout = split_batches(xh[:args.eval_samples], yh[:args.eval_samples],
                            bs)
    test = split_batches(xs, ys, 256)
    target, lo = args.flops_ratio, args.flops_ratio - args.window

    def evaluators(m, pruner):
        return (AdaptiveBNEvaluator(pruner, bn_train, heldout,
                                    bn_batches=args.bn_batches,
                                    mode='export'),
                AdaptiveBNEvaluator(pruner, bn_train, test,
                                    bn_batches=args.bn_batches,
                                    mode='export'))

    pruner = ChannelPruner(model, X1, divisor=1)  # README rows: free widths
    scores = pruner.get_metric_local('l1')
    space = KeepRatioSpace(pruner, scores, ratio_grid(0.3, 1.0, 0.1))
    ev, ev_test = evaluators(model, pruner)
    dense = ev_test.evaluate(None)['top1']
    rows = []
    for method in args.methods.split(','):
        t0 = time.perf_counter()
        cands, trials = 1, 1
        cur_pruner, cur_ev_test = pruner, ev_test
        if method in ('hybrid', 'random'):
            subnet, cands, dt, trials = search(method, space, ev, args, lo)
        elif method == 'uniform':
            subnet = pruner.sample_subnet_for_flops(target * (1 - args.window
                                                              / 2 / target),
                                                    scores, mode='uniform',
                                                    verify=False)
            dt = time.perf_counter() - t0
        elif method == 'autoslim':
            from mmrazor_ext.algorithms import sandwich_train
            slim = copy.deepcopy(model)
            if args.autoslim_epochs:
                sandwich_train(slim, loader, args.autoslim_epochs,
                               input_shape=X1.shape, lr=0.05, min_ratio=0.3)
            slim.eval()
            cur_pruner = ChannelPruner(slim, X1, divisor=1)
            sev, cur_ev_test = evaluators(slim, cur_pruner)
            hits = greedy_slim(cur_pruner, sev, [target],
                               step=args.autoslim_step,
                               min_ratio=0.3, tolerance=args.window / target)
            subnet = hits[0]['subnet']
            cands = sev.num_evaluations
            dt = time.perf_counter() - t0
        else:
            raise SystemExit(f'unknown method {method!r}')
        res = cur_ev_test.evaluate(subnet)
        rows.append({
            'method': method, 'test_top1': round(res['top1'], 2),
            'flops_ratio': round(res['flops_ratio'], 4),
            'candidates_evaluated': cands, 'trials': trials,
            'search_s': round(dt, 1),
            'candidates_per_min': round(60 * cands / dt, 1) if dt else None})
        print(json.dumps(rows[-1]), flush=True)
    out = {'dense_test_top1': dense, 'args': vars(args), 'rows': rows}
    write_json_csv(args.out_dir, 'search', out, rows, indent=1)
    print(f'dense test top-1 {dense:.2f}')
    print(format_table(rows, [
        ('method', 'method', '10s'), ('top1', 'test_top1', '7.2f'),
        ('FLOPs', 'flops_ratio', '7.3f'),
        ('cands', 'candidates_evaluated', '6d'),
        ('time s', 'search_s', '7.1f'),
        ('cand/min', lambda r: r['candidates_per_min'] or 0, '8.1f')]))


if __name__ == '__main__':
    main()
