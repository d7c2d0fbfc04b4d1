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
import argparse
import csv
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

import matplotlib  # noqa: E402

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from tools.model_loading import build_from_config, build_loader  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='CDP score plots')
    p.add_argument('config')
    p.add_argument('checkpoint')
    p.add_argument('--out-dir', required=True)
    p.add_argument('--batches', type=int, default=20,
                   help='training batches to collect features from')
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--by', choices=['class', 'sample'], default='class')
    p.add_argument('--coe', type=float, default=0.0)
    p.add_argument('--flops-ratio', type=float, default=0.5,
                   help='FLOPs kept for the kept-ratio chart')
    p.add_argument('--cfg-options', nargs='*', default=[])
    return p.parse_args(argv)


def _atomic(path, write):
    tmp = path + '.tmp' + os.path.splitext(path)[1]
    write(tmp)
    os.replace(tmp, path)


def main(argv=None) -> dict:
    args = parse_args(argv)
    from mmengine.config import DictAction

    from mmrazor_ext.metrics import FeatureCollector, cdp_scores
    from mmrazor_ext.pruners import ChannelPruner
    from mmrazor_ext.utils.evaluation import to_tensors
    opts = {k: DictAction._parse_iterable(v) for k, v in
            (o.split('=', 1) for o in args.cfg_options)}
    cfg, model, example = build_from_config(args.config, args.checkpoint, opts)
    pruner = ChannelPruner(model, example)
    num_classes = getattr(getattr(model, 'head', None), 'num_classes', None)
    col = FeatureCollector(pruner.graph, stats=('pooled',), by=args.by,
                           num_classes=num_classes)
    loader = build_loader(cfg, 'train', args.batch_size)
    for i, batch in enumerate(tqdm(loader, total=args.batches,
                                   desc='collecting features')):
        if i >= args.batches:
            break
        col.update(*to_tensors(model, batch))
    docs = col.documents()
    layer_scores = {k: cdp_scores(v, args.coe) for k, v in docs.items()}
    space_scores = pruner.get_metric_local(dict(type='cdp', coe=args.coe),
                                           docs)
    subnet = pruner.sample_subnet_for_flops(args.flops_ratio, space_scores,
                                            mode='global', verify=False)
    gmask = pruner.graph.global_mask(subnet)
    os.makedirs(args.out_dir, exist_ok=True)

    layers = list(layer_scores)
    kept = {}
    rows = []
    for name in layers:
        keep = pruner.graph.layer_keep(pruner.graph.layers[name], gmask, 'out')
        keep = keep.reshape(-1) if keep is not None else \
            torch.ones(len(layer_scores[name]), dtype=torch.bool)
        kept[name] = float(keep.float().mean())
        for ch, (s, k) in enumerate(zip(layer_scores[name].tolist(),
                                        keep.tolist())):
            rows.append((name, ch, f'{s:.6g}', int(k)))

    def write_csv(path):
        with open(path, 'w', newline='') as f:
            w = csv.writer(f)
            w.writerow(['layer', 'channel', 'score', 'kept'])
            w.writerows(rows)
    csv_path = osp.join(args.out_dir, 'cdp_scores.csv')
    _atomic(csv_path, write_csv)

    width = max(len(v) for v in layer_scores.values())
    grid = np.full((len(layers), width), np.nan)
    for i, name in enumerate(layers):
        s = np.sort(layer_scores[name].numpy())[::-1]
        grid[i, :len(s)] = s / max(np.abs(s).max(), 1e-12)
    fig, ax = plt.subplots(figsize=(10, max(3, 0.22 * len(layers))))
    im = ax.imshow(grid, aspect='auto', cmap='viridis', interpolation='none')
    ax.set_yticks(range(len(layers)), [n.replace('backbone.', '')
                                       for n in layers], fontsize=6)
    ax.set_xlabel('channel (sorted by score)')
    ax.set_title(f'CDP scores per layer (normalised, documents by {args.by})')
    fig.colorbar(im, ax=ax, label='score / max')
    fig.tight_layout()
    heat = osp.join(args.out_dir, 'cdp_scores_heatmap.png')
    _atomic(heat, lambda p: fig.savefig(p, dpi=120))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(layers)), 4))
    ax.bar(range(len(layers)), [kept[n] for n in layers], color='tab:blue')
    ax.set_xticks(range(len(layers)), [n.replace('backbone.', '')
                                       for n in layers], rotation=90,
                  fontsize=6)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel('kept fraction')
    ax.set_title(f'Channels kept per layer at {args.flops_ratio:.0%} FLOPs '
                 '(CDP, global threshold)')
    fig.tight_layout()
    bar = osp.join(args.out_dir, 'cdp_kept_ratio.png')
    _atomic(bar, lambda p: fig.savefig(p, dpi=120))
    plt.close(fig)
    print(f'wrote {heat}, {bar}, {csv_path}')
    return {'heatmap': heat, 'kept_ratio': bar, 'csv': csv_path,
            'kept': kept}


if __name__ == '__main__':
    main()
