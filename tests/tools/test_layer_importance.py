"""tools/analysis/layer_importance.py on the tiny baseline."""
import csv

import pytest

from helpers import BASELINE, load_tool


# -- LayerFusion end to end ---------------------------------------------------------
@pytest.fixture(scope='module')
def trained(tiny_baseline):
    return tiny_baseline


def test_layer_importance_tool(tmp_path, tiny_fmnist, trained):
    tool = load_tool('tools/analysis/layer_importance.py')
    tool.main([BASELINE, trained, '--out-dir', str(tmp_path), '--batches',
               '2', '--batch-size', '16', '--val-batches', '1',
               '--cfg-options',
               f'train_dataloader.dataset.data_root={tiny_fmnist}',
               f'val_dataloader.dataset.data_root={tiny_fmnist}'])
    with open(tmp_path / 'layer_importance.csv') as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 9
    assert {'block_cka', 'block_cosine', 'block_weight_norm',
            'top1_drop_removed', 'reason', 'flops'} <= set(rows[0])
    assert sum(r['removable'] == 'True' for r in rows) == 7
    assert all(r['reason'] for r in rows if r['removable'] == 'False')
    assert (tmp_path / 'layer_importance.png').stat().st_size > 1000
