"""CDP visualization tool and pruning scripts on tiny data."""
import csv
import os

from helpers import BASELINE, PY, run_tool


def test_visualize_cdp(tmp_path, tiny_fmnist, tiny_baseline):
    out = tmp_path / 'vis'
    run_tool(['bash', 'scripts/pruning/visual_cdp_score_resnet20.sh',
              tiny_baseline, '--batch-size', '16',
              '--cfg-options', f'train_dataloader.dataset.data_root={tiny_fmnist}'],
             env={'OUT_DIR': str(out), 'BATCHES': '4'})
    for name in ('cdp_scores_heatmap.png', 'cdp_kept_ratio.png'):
        data = (out / name).read_bytes()
        assert data[:8] == b'\x89PNG\r\n\x1a\n' and len(data) > 5000
    with open(out / 'cdp_scores.csv') as f:
        rows = list(csv.DictReader(f))
    assert set(rows[0]) == {'layer', 'channel', 'score', 'kept'}
    layers = {r['layer'] for r in rows}
    assert 'backbone.conv1' in layers
    assert sum(int(r['kept']) for r in rows) < len(rows)  # some pruned
    assert not [p for p in os.listdir(out) if '.tmp' in p]


def test_sensitivity(tmp_path, tiny_fmnist, tiny_baseline):
    out = tmp_path / 'sens'
    run_tool([PY, 'tools/analysis/sensitivity.py', BASELINE,
              tiny_baseline, '--out-dir', str(out),
              '--ratios', '0.25', '0.75', '--val-batches', '2',
              '--batch-size', '16', '--bn-recalib-batches', '2',
              '--cfg-options', f'train_dataloader.dataset.data_root={tiny_fmnist}',
              f'val_dataloader.dataset.data_root={tiny_fmnist}'])
    with open(out / 'sensitivity.csv') as f:
        rows = list(csv.DictReader(f))
    spaces = {r['space'] for r in rows}
    assert len(rows) == 2 * len(spaces) and len(spaces) >= 9
    for r in rows:
        assert 0 <= float(r['top1']) <= 100
        assert 0 < float(r['flops_ratio']) < 1
    # Removing more channels of a space never leaves more FLOPs.
    for s in spaces:
        f = {float(r['ratio']): float(r['flops_ratio'])
             for r in rows if r['space'] == s}
        assert f[0.75] < f[0.25]
    assert (out / 'sensitivity.png').read_bytes()[:4] == b'\x89PNG'
