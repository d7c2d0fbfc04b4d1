"""Per-space pruning sensitivity: prune one channel space at a time.

For every ChannelSpace and ratio in ``--ratios`` the space alone is pruned
(by ``--metric``, in masked mode), BN statistics are optionally
recalibrated, and top-1 is measured on ``--val-batches`` validation
batches. Writes ``sensitivity.csv`` (space, ratio, top1, flops) and
``sensitivity.png`` (one curve per space) to ``--out-dir``. Useful to pick
non-uniform ratios (``sample_subnet_nonuni``) or seed a search.

Example:
    python tools/analysis/sensitivity.py \\
        configs/baselines/resnet20_1xb128_fashionmnist.py CKPT --out-dir work_dirs/sens
"""
import argparse
import copy
import csv
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

import matplotlib  # noqa: E402

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
from tqdm import tqdm  # noqa: E402

from tools.model_loading import build_from_config, build_loader  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='per-space pruning sensitivity')
    p.add_argument('config')
    p.add_argument('checkpoint')
    p.add_argument('--out-dir', required=True)
    p.add_argument('--metric', default='l1',
                   help='weight metric used to choose channels')
    p.add_argument('--ratios', type=float, nargs='+',
                   default=[round(0.1 * i, 1) for i in range(1, 10)])
    p.add_argument('--val-batches', type=int, default=10)
    p.add_argument('--batch-size', type=int, default=256)
    p.add_argument('--bn-recalib-batches', type=int, default=0,
                   help='training batches for BN recalibration (0: off)')
    p.add_argument('--cfg-options', nargs='*', default=[])
    return p.parse_args(argv)


def main(argv=None) -> list:
    args = parse_args(argv)
    from mmengine.config import DictAction

    from mmrazor_ext.pruners import ChannelPruner
    from mmrazor_ext.utils.evaluation import evaluate_top1, recalibrate_bn
    opts = {k: DictAction._parse_iterable(v) for k, v in
            (o.split('=', 1) for o in args.cfg_options)}
    cfg, model, example = build_from_config(args.config, args.checkpoint, opts)
    val = list(_take(build_loader(cfg, 'val', args.batch_size),
                     args.val_batches))
    train = list(_take(build_loader(cfg, 'train', args.batch_size),
                       args.bn_recalib_batches))
    pruner = ChannelPruner(model, example)
    scores = pruner.get_metric_local(args.metric)
    dense_state = copy.deepcopy(model.state_dict())
    base_top1 = evaluate_top1(model, val)
    base_flops = pruner.original_flops
    rows = []
    jobs = [(s, r) for s in pruner.channel_spaces for r in args.ratios]
    for space, ratio in tqdm(jobs, desc='sensitivity'):
        subnet = pruner.sample_subnet_nonuni({space: ratio}, scores)
        pruner.set_subnet(subnet)
        if train:
            recalibrate_bn(model, train, len(train))
        top1 = evaluate_top1(model, val)
        flops = pruner.estimate_flops(subnet)
        pruner.clear_subnet()
        model.load_state_dict(dense_state)  # undo BN recalibration
        rows.append({'space': space, 'ratio': ratio, 'top1': round(top1, 3),
                     'top1_drop': round(base_top1 - top1, 3),
                     'flops_ratio': round(flops / base_flops, 5)})
    os.makedirs(args.out_dir, exist_ok=True)
    csv_path = osp.join(args.out_dir, 'sensitivity.csv')
    tmp = csv_path + '.tmp'
    with open(tmp, 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, csv_path)
    fig, ax = plt.subplots(figsize=(8, 5))
    for space in pruner.channel_spaces:
        pts = [(r['ratio'], r['top1']) for r in rows if r['space'] == space]
        ax.plot(*zip(*pts), marker='.', label=space.replace('backbone.', ''))
    ax.axhline(base_top1, color='k', ls='--', lw=1, label='dense')
    ax.set_xlabel('fraction of channels removed (this space only)')
    ax.set_ylabel('top-1 (%)')
    ax.set_title(f'Pruning sensitivity ({args.metric}, BN recalibration '
                 f"{'on' if train else 'off'})")
    ax.legend(fontsize=5, ncol=2)
    fig.tight_layout()
    png = osp.join(args.out_dir, 'sensitivity.png')
    fig.savefig(png + '.tmp.png', dpi=120)
    os.replace(png + '.tmp.png', png)
    plt.close(fig)
    print(f'dense top-1 {base_top1:.2f} %; wrote {csv_path}, {png}')
    return rows


def _take(it, n):
    for i, x in enumerate(it):
        if i >= n:
            break
        yield x


if __name__ == '__main__':
    main()
