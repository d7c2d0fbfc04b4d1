"""Per-space pruning sensitivity: prune one channel space at a time.

For every ChannelSpace and ratio in ``--ratios`` the space alone is pruned
(by ``--metric``, in masked mode), BN statistics are optionally
recalibrated, and top-1 is measured on ``--val-batches`` validation
batches. Ratios are exact channel fractions (``--divisor 1``: a rounded
width would make neighbouring ratios the same measurement). Writes
``sensitivity.csv`` (space, ratio, top1, flops) and
``sensitivity.png`` (one curve per space) to ``--out-dir``. Useful to pick
non-uniform ratios (``sample_subnet_nonuni``) or seed a search.

Example:
    python tools/analysis/sensitivity.py \\
        configs/baselines/resnet20_1xb128_fashionmnist.py CKPT --out-dir work_dirs/sens
"""
import copy
import itertools
import os.path as osp

from tqdm import tqdm

from mmrazor_ext.apis.model_loading import (
    build_from_args,
    build_loader,
    model_tool_parser,
)
from mmrazor_ext.pruners.sampling import check_divisor
from mmrazor_ext.utils.tables import atomic_write_csv
from mmrazor_ext.visualization.analysis import plot_sensitivity


def parse_args(argv=None):
    p = model_tool_parser('per-space pruning sensitivity', batch_size=256)
    p.add_argument('--metric', default='l1',
                   help='weight metric used to choose channels')
    p.add_argument('--ratios', type=float, nargs='+',
                   default=[round(0.1 * i, 1) for i in range(1, 10)])
    p.add_argument('--divisor', default=1, type=check_divisor,
                   help="channel divisor of the pruner (int or 'auto'); 1: "
                   'each ratio removes exactly that fraction')
    p.add_argument('--val-batches', type=int, default=10)
    p.add_argument('--bn-recalib-batches', type=int, default=0,
                   help='training batches for BN recalibration (0: off)')
    return p.parse_args(argv)


def main(argv=None) -> list:
    args = parse_args(argv)
    from mmrazor_ext.pruners import ChannelPruner
    from mmrazor_ext.utils.evaluation import evaluate_top1, recalibrate_bn
    cfg, model, example = build_from_args(args)
    val = list(itertools.islice(build_loader(cfg, 'val', args.batch_size),
                                args.val_batches))
    train = list(itertools.islice(build_loader(cfg, 'train', args.batch_size),
                                  args.bn_recalib_batches))
    pruner = ChannelPruner(model, example, divisor=args.divisor)
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
    csv_path = atomic_write_csv(osp.join(args.out_dir, 'sensitivity.csv'),
                                rows)
    png = plot_sensitivity(
        rows, base_top1, osp.join(args.out_dir, 'sensitivity.png'),
        f'Pruning sensitivity ({args.metric}, BN recalibration '
        f"{'on' if train else 'off'})")
    print(f'dense top-1 {base_top1:.2f} %; wrote {csv_path}, {png}')
    return rows


if __name__ == '__main__':
    main()
