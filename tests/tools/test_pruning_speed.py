"""``tools/benchmark/pruning_speed.py`` on a tiny model
(structure of the rows and the JSON; no timing assertions)."""
import json
import math

import pytest

from helpers import load_tool

pytest.importorskip('torch_pruning')


def test_vs_torch_pruning_rows_and_json(tmp_path, capsys):
    tool = load_tool('tools/benchmark/pruning_speed.py')
    out = tmp_path / 'build.json'
    assert tool.main(['--vs-torch-pruning', '--models', 'resnet20',
                      '--rounds', '2', '--threads', '1',
                      '--allocator', 'system', '--out', str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r['model'] for r in rows] == ['resnet20']
    r = rows[0]
    assert r['input'] == 32 and r['rounds'] == 2 and r['threads'] == 1
    for k in ('ours', 'tp_pruner', 'tp_graph'):
        # one entry per timed round (the warm-up round is not kept)
        assert len(r['times_s'][k]) == 2
        assert all(t > 0 for t in r['times_s'][k])
    assert math.isclose(r['ratio'], r['ours_s'] / r['tp_pruner_s'])
    assert math.isclose(r['ratio_graph_only'], r['ours_s'] / r['tp_graph_s'])
    text = capsys.readouterr().out
    assert 'resnet20' in text and 'median ours/TP over 1 models' in text
    assert not [p for p in tmp_path.iterdir() if '.tmp' in p.name]


def test_vs_torch_pruning_cpu_clock(tmp_path):
    """``--clock cpu`` times process CPU time (a loaded machine) and says
    so in every row."""
    tool = load_tool('tools/benchmark/pruning_speed.py')
    out = tmp_path / 'build.json'
    assert tool.main(['--vs-torch-pruning', '--models', 'resnet20',
                      '--rounds', '2', '--threads', '1', '--clock', 'cpu',
                      '--allocator', 'system', '--out', str(out)]) == 0
    rows = json.loads(out.read_text())
    assert rows[0]['clock'] == 'cpu'
    assert len(rows[0]['times_s']['ours']) == 2
    assert all(t > 0 for t in rows[0]['times_s']['ours'])


def test_fused_variants_time_a_fused_dense_baseline(tmp_path, capsys):
    """``--divisors ... --fuse-bn`` compares BN-folded pruned models with a
    BN-folded dense one (it used to time the unfolded dense model), under
    the allocator setting it prints."""
    import torch
    from torch import nn

    from mmrazor_ext.models import CifarResNet
    tool = load_tool('tools/benchmark/pruning_speed.py')
    torch.manual_seed(0)
    model, x = CifarResNet(20).eval(), torch.randn(2, 3, 32, 32)
    dense = tool.dense_baseline(model, x[:1], fuse_bn=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in dense.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(dense(x), model(x), rtol=1e-4,
                                   atol=1e-5)
    assert tool.dense_baseline(model, x[:1], fuse_bn=False) is model
    out = tmp_path / 'v.json'
    assert tool.main(['--models', 'resnet20', '--divisors', '1', 'auto',
                      '--fuse-bn', '--repeats', '1', '--warmup', '0',
                      '--batch', '2', '--threads', '1',
                      '--allocator', 'system', '--out', str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r['variant'] for r in rows] == ['divisor=1', 'divisor=auto']
    assert all(1.8 < r['flops_reduction'] < 2.2 for r in rows)
    assert 'allocator: system' in capsys.readouterr().out
