"""Plot CDP channel scores of a trained model.

Writes to ``--out-dir``:
  * ``cdp_scores_heatmap.png`` - layers x channels, each row sorted;
  * ``cdp_kept_ratio.png`` - kept fraction per layer at ``--flops-ratio``
    (one global threshold, as CDP prunes);
  * ``cdp_scores.csv`` - layer, channel, score, kept.

Example:
    python tools/visualization/visualize_cdp.py \\
        configs/baselines/resnet20_1xb128_fashionmnist.py \\
        work_dirs/resnet20_1xb128_fashionmnist/epoch_3.pth --out-dir work_dirs/cdp_vis
"""
from mmrazor_ext.apis.cdp_report import cdp_score_report
from mmrazor_ext.apis.model_loading import (
    build_from_args,
    build_loader,
    model_tool_parser,
)


def parse_args(argv=None):
    p = model_tool_parser('CDP score plots', batch_size=64)
    p.add_argument('--batches', type=int, default=20,
                   help='training batches to collect features from')
    p.add_argument('--by', choices=['class', 'sample'], default='class')
    p.add_argument('--coe', type=float, default=0.0)
    p.add_argument('--flops-ratio', type=float, default=0.5,
                   help='FLOPs kept for the kept-ratio chart')
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    cfg, model, example = build_from_args(args)
    return cdp_score_report(model, example,
                            build_loader(cfg, 'train', args.batch_size),
                            args.out_dir, batches=args.batches, by=args.by,
                            coe=args.coe, flops_ratio=args.flops_ratio)


if __name__ == '__main__':
    main()
