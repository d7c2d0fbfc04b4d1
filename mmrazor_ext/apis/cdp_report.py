"""CDP channel scores of a trained model: CSV, heat-map and kept-ratio
chart (``tools/visualization/visualize_cdp.py`` and ``tools/demo.py``)."""
from __future__ import annotations

import itertools
import os.path as osp

import torch
from torch import nn

__all__ = ['cdp_score_report']


def cdp_score_report(model: nn.Module, example_inputs: torch.Tensor,
                     loader, out_dir: str, batches: int = 20,
                     by: str = 'class', coe: float = 0.0,
                     flops_ratio: float = 0.5) -> dict:
    """Score every channel with CDP and write the report to ``out_dir``.

    Features are collected on ``batches`` batches of ``loader``; the kept
    channels are those of one global threshold at ``flops_ratio`` of the
    FLOPs, as CDP prunes. Writes ``cdp_scores.csv`` (layer, channel, score,
    kept), ``cdp_scores_heatmap.png`` and ``cdp_kept_ratio.png``.

    Args:
        model: Trained model (mmengine model or plain module).
        example_inputs: One input batch for tracing.
        loader: Training batches (mmengine dicts or ``(inputs, labels)``).
        out_dir: Output folder (created).
        batches: Batches of ``loader`` to collect features from.
        by: Documents per ``'class'`` or per ``'sample'``.
        coe: CDP's ``coe`` (0: the TF factor is 1).
        flops_ratio: FLOPs kept for the kept-ratio chart.

    Returns:
        ``{'heatmap', 'kept_ratio', 'csv'}`` paths and ``'kept'``:
        ``{layer: kept fraction}``.
    """
    from tqdm import tqdm

    from mmrazor_ext.metrics import FeatureCollector, cdp_scores
    from mmrazor_ext.pruners import ChannelPruner
    from mmrazor_ext.utils.evaluation import to_tensors
    from mmrazor_ext.utils.tables import atomic_write_csv
    from mmrazor_ext.visualization.analysis import plot_cdp_heatmap, plot_kept_ratio
    pruner = ChannelPruner(model, example_inputs)
    num_classes = getattr(getattr(model, 'head', None), 'num_classes', None)
    col = FeatureCollector(pruner.graph, stats=('pooled',), by=by,
                           num_classes=num_classes)
    for batch in tqdm(itertools.islice(loader, batches), total=batches,
                      desc='collecting features'):
        col.update(*to_tensors(model, batch))
    docs = col.documents()
    layer_scores = {k: cdp_scores(v, coe) for k, v in docs.items()}
    space_scores = pruner.get_metric_local(dict(type='cdp', coe=coe), docs)
    subnet = pruner.sample_subnet_for_flops(flops_ratio, space_scores,
                                            mode='global', verify=False)
    gmask = pruner.graph.global_mask(subnet)

    kept, rows = {}, []
    for name, scores in layer_scores.items():
        keep = pruner.graph.layer_keep(pruner.graph.layers[name], gmask, 'out')
        keep = keep.reshape(-1) if keep is not None else \
            torch.ones(len(scores), dtype=torch.bool)
        kept[name] = float(keep.float().mean())
        rows += [(name, ch, f'{s:.6g}', int(k))
                 for ch, (s, k) in enumerate(zip(scores.tolist(),
                                                 keep.tolist()))]
    csv_path = atomic_write_csv(osp.join(out_dir, 'cdp_scores.csv'), rows,
                                header=['layer', 'channel', 'score', 'kept'])
    heat = plot_cdp_heatmap(layer_scores,
                            osp.join(out_dir, 'cdp_scores_heatmap.png'), by)
    bar = plot_kept_ratio(kept, osp.join(out_dir, 'cdp_kept_ratio.png'),
                          flops_ratio)
    print(f'wrote {heat}, {bar}, {csv_path}')
    return {'heatmap': heat, 'kept_ratio': bar, 'csv': csv_path,
            'kept': kept}
