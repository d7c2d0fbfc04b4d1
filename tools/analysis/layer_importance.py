"""Importance of every residual block: CSV + bar chart.

Each block found by :func:`mmrazor_ext.graph.find_blocks` is scored by the
block metrics in ``--metrics`` (feature metrics on ``--batches`` training
batches) and, with ``--val-batches > 0``, by the top-1 drop when that block
alone is replaced by identity (removable blocks only). Writes
``layer_importance.csv`` (block, removable, reason, flops, one column per
metric) and ``layer_importance.png`` (one bar group per block; non-removable
blocks hatched) to ``--out-dir``.

Example:
    python tools/analysis/layer_importance.py \\
        configs/baselines/resnet56_1xb128_fashionmnist.py CKPT \\
        --out-dir work_dirs/layer_importance
"""
import argparse
import csv
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

import matplotlib  # noqa: E402

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from tools.model_loading import build_from_config, build_loader  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='residual block importance')
    p.add_argument('config', help='baseline or algorithm config')
    p.add_argument('checkpoint')
    p.add_argument('--out-dir', required=True)
    p.add_argument('--metrics', nargs='+',
                   default=['block_cka', 'block_cosine', 'block_weight_norm'],
                   help='block metrics of the METRICS registry')
    p.add_argument('--batches', type=int, default=10,
                   help='training batches for feature metrics')
    p.add_argument('--val-batches', type=int, default=0,
                   help='also measure the top-1 drop of removing each '
                   'removable block alone on this many val batches')
    p.add_argument('--batch-size', type=int, default=128)
    p.add_argument('--cfg-options', nargs='*', default=[])
    return p.parse_args(argv)


def main(argv=None) -> list:
    args = parse_args(argv)
    from mmengine.config import DictAction

    from mmrazor_ext.algorithms import block_flops
    from mmrazor_ext.graph import find_blocks, remove_blocks
    from mmrazor_ext.metrics import BlockFeatureCollector, LayerMetric
    from mmrazor_ext.registry import METRICS
    from mmrazor_ext.utils.evaluation import evaluate_top1, to_tensors
    opts = {k: DictAction._parse_iterable(v) for k, v in
            (o.split('=', 1) for o in args.cfg_options)}
    cfg, model, example = build_from_config(args.config, args.checkpoint, opts)
    blocks = find_blocks(model, example)
    if not blocks.blocks:
        raise SystemExit('no residual blocks found in the model')
    metrics = {}
    for name in args.metrics:
        cls = METRICS.get(name)
        if cls is None or not issubclass(cls, LayerMetric):
            raise SystemExit(f'{name!r} is not a block metric of the METRICS '
                             'registry (e.g. block_cka, block_cosine, '
                             'block_weight_norm)')
        metrics[name] = cls()
    contents = None
    if any(m.requires_features for m in metrics.values()):
        col = BlockFeatureCollector(blocks)
        train = build_loader(cfg, 'train', args.batch_size)
        for i, batch in enumerate(train):
            if i >= args.batches:
                break
            col.update(to_tensors(model, batch)[0])
        contents = col.statistics()
    scores = {name: m(blocks, model, contents) for name, m in metrics.items()}
    flops = block_flops(model, blocks, (example,))
    drops = {}
    if args.val_batches > 0:
        val = []
        for i, batch in enumerate(build_loader(cfg, 'val', args.batch_size)):
            if i >= args.val_batches:
                break
            val.append(batch)
        base = evaluate_top1(model, val)
        for name in blocks.removable:
            small = remove_blocks(model, [name], blocks)
            drops[name] = base - evaluate_top1(small, val)
    rows = []
    for name, info in blocks.blocks.items():
        row = {'block': name, 'removable': info.removable,
               'reason': info.reason, 'flops': flops[name]}
        for metric, s in scores.items():
            row[metric] = round(float(s.get(name, float('nan'))), 6)
        if drops:
            row['top1_drop_removed'] = round(drops.get(name, float('nan')), 3)
        rows.append(row)
    os.makedirs(args.out_dir, exist_ok=True)
    csv_path = osp.join(args.out_dir, 'layer_importance.csv')
    with open(csv_path + '.tmp', 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    os.replace(csv_path + '.tmp', csv_path)
    png = osp.join(args.out_dir, 'layer_importance.png')
    _plot(rows, list(scores) + (['top1_drop_removed'] if drops else []), png)
    print(f'{len(rows)} blocks ({len(blocks.removable)} removable); wrote '
          f'{csv_path}, {png}')
    return rows


def _plot(rows, columns, path):
    n = len(columns)
    fig, axes = plt.subplots(n, 1, figsize=(max(6, 0.35 * len(rows)), 2.2 * n),
                             squeeze=False, sharex=True)
    labels = [r['block'].replace('backbone.', '') for r in rows]
    for ax, col in zip(axes[:, 0], columns):
        vals = [r[col] for r in rows]
        vals = [v if v == v and abs(v) != float('inf') else 0 for v in vals]
        bars = ax.bar(range(len(rows)), vals, color='tab:blue')
        for bar, r in zip(bars, rows):
            if not r['removable']:
                bar.set_hatch('//')
                bar.set_color('tab:gray')
        ax.set_ylabel(col, fontsize=8)
    axes[-1, 0].set_xticks(range(len(rows)))
    axes[-1, 0].set_xticklabels(labels, rotation=90, fontsize=7)
    axes[0, 0].set_title('block importance (higher = more important; grey '
                         'hatched = not removable)', fontsize=9)
    fig.tight_layout()
    fig.savefig(path + '.tmp.png', dpi=120)
    os.replace(path + '.tmp.png', path)
    plt.close(fig)


if __name__ == '__main__':
    main()
