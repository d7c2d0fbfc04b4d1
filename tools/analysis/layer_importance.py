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
import itertools
import os.path as osp

from mmrazor_ext.apis.model_loading import (
    build_from_args,
    build_loader,
    model_tool_parser,
)
from mmrazor_ext.utils.tables import atomic_write_csv
from mmrazor_ext.visualization.analysis import plot_block_importance


def parse_args(argv=None):
    p = model_tool_parser('residual block importance', batch_size=128)
    p.add_argument('--metrics', nargs='+',
                   default=['block_cka', 'block_cosine', 'block_weight_norm'],
                   help='block metrics of the METRICS registry')
    p.add_argument('--batches', type=int, default=10,
                   help='training batches for feature metrics')
    p.add_argument('--val-batches', type=int, default=0,
                   help='also measure the top-1 drop of removing each '
                   'removable block alone on this many val batches')
    return p.parse_args(argv)


def main(argv=None) -> list:
    args = parse_args(argv)
    from mmrazor_ext.algorithms import block_flops
    from mmrazor_ext.graph import find_blocks, remove_blocks
    from mmrazor_ext.metrics import BlockFeatureCollector, LayerMetric
    from mmrazor_ext.registry import METRICS
    from mmrazor_ext.utils.evaluation import evaluate_top1, to_tensors
    cfg, model, example = build_from_args(args)
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
        for batch in itertools.islice(train, args.batches):
            col.update(to_tensors(model, batch)[0])
        contents = col.statistics()
    scores = {name: m(blocks, model, contents) for name, m in metrics.items()}
    flops = block_flops(model, blocks, (example,))
    drops = {}
    if args.val_batches > 0:
        val = list(itertools.islice(build_loader(cfg, 'val', args.batch_size),
                                    args.val_batches))
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
    csv_path = atomic_write_csv(
        osp.join(args.out_dir, 'layer_importance.csv'), rows)
    png = plot_block_importance(
        rows, list(scores) + (['top1_drop_removed'] if drops else []),
        osp.join(args.out_dir, 'layer_importance.png'))
    print(f'{len(rows)} blocks ({len(blocks.removable)} removable); wrote '
          f'{csv_path}, {png}')
    return rows


if __name__ == '__main__':
    main()
