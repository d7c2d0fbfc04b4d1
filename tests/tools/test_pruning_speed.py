"""``tools/benchmark/pruning_speed.py --vs-torch-pruning`` on a tiny model
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
                      '--out', str(out)]) == 0
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
                      '--out', str(out)]) == 0
    rows = json.loads(out.read_text())
    assert rows[0]['clock'] == 'cpu'
    assert len(rows[0]['times_s']['ours']) == 2
    assert all(t > 0 for t in rows[0]['times_s']['ours'])
