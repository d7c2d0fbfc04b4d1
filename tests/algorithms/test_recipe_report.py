"""The recipe report (algorithms/recipe_report.py, visualization/recipe.py)."""
import csv
import json
import os

import pytest
import torch

from helpers.models import resnet20
from mmrazor_ext.algorithms.recipe_deploy import measure_stage
from mmrazor_ext.algorithms.recipe_report import (
    normalise_rows,
    write_recipe_report,
)

REASON = 'backbone.layer1.0.conv1: input width 6 is not a multiple of 4'


@pytest.fixture(scope='module')
def measured_rows():
    """A measured dense ResNet-20 row, two made-up stages and a skipped
    one."""
    dense = measure_stage(resnet20().eval(), torch.randn(1, 1, 28, 28),
                          latency_batch=2, repeats=1)
    return [
        dict(stage='dense', top1=91.5, **{k: v for k, v in dense.items()
                                          if k != 'top1'}),
        dict(stage='prune50', type='OneShotPruning', macs=dense['macs'] // 4,
             params=dense['params'] // 4, nonzero_params=dense['params'] // 4,
             sparsity=0.0, latency_ms=dense['latency_ms'] / 2, top1=90.0),
        dict(stage='sparse24', skipped=REASON),
        dict(stage='deploy', macs=dense['macs'] // 4,
             params=dense['params'] // 4, nonzero_params=dense['params'] // 8,
             sparsity=0.46, sparsity_by_pattern={'2:4': 1.0},
             latency_ms=dense['latency_ms'] / 3, top1=None),
    ]


def test_report_files_table_and_chart(measured_rows, tmp_path, capsys):
    rows = measured_rows
    out = write_recipe_report(str(tmp_path), rows, title='r20 recipe')
    assert sorted(os.listdir(tmp_path)) == [
        'recipe_report.csv', 'recipe_report.json', 'recipe_report.png']
    data = json.loads((tmp_path / 'recipe_report.json').read_text())
    assert data['format'] == 'mmrazor_ext.recipe_report'
    assert data['baseline_stage'] == 'dense'
    stages = data['stages']
    assert [s['stage'] for s in stages] == ['dense', 'prune50', 'sparse24',
                                            'deploy']
    assert stages[0]['relative']['macs'] == 1.0
    assert stages[3]['relative']['macs'] == pytest.approx(
        (rows[0]['macs'] // 4) / rows[0]['macs'])
    assert stages[3]['relative']['nonzero_params'] < \
        stages[3]['relative']['params']
    assert stages[2]['skipped'] == REASON and stages[2]['macs'] is None
    assert all(v is None for v in stages[2]['relative'].values())
    assert stages[3]['relative']['top1'] is None  # not measured
    with open(tmp_path / 'recipe_report.csv', newline='') as f:
        table = list(csv.DictReader(f))
    assert [r['stage'] for r in table] == ['dense', 'prune50', 'sparse24',
                                           'deploy']
    assert table[3]['sparsity_2:4'] == '1.0' and table[2]['skipped'] == REASON
    assert table[1]['type'] == 'OneShotPruning'
    assert int(table[0]['macs']) == rows[0]['macs']
    png = (tmp_path / 'recipe_report.png').read_bytes()
    assert png[:8] == b'\x89PNG\r\n\x1a\n' and len(png) > 5000
    printed = capsys.readouterr().out
    assert printed.strip() == out['table']
    lines = out['table'].splitlines()
    assert lines[0].split()[:3] == ['stage', 'MMACs', 'params(K)']
    assert f'skipped: {REASON}' in lines[3]
    assert lines[3].split()[1] == '-'  # no numbers for a skipped stage
    assert f"{rows[0]['macs'] / 1e6:.2f}" in lines[1]


def test_failed_write_keeps_the_previous_report(measured_rows, tmp_path):
    rows = measured_rows
    write_recipe_report(str(tmp_path), rows, print_table=False)
    before = (tmp_path / 'recipe_report.json').read_bytes()
    bad = [dict(rows[0], extra=object())]  # not JSON serialisable
    with pytest.raises(TypeError):
        write_recipe_report(str(tmp_path), bad, print_table=False)
    assert (tmp_path / 'recipe_report.json').read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == [
        'recipe_report.csv', 'recipe_report.json', 'recipe_report.png']


@pytest.mark.parametrize('rows, match', [
    ([], 'non-empty list'),
    ({'stage': 'a'}, 'non-empty list'),
    ([dict(stage='a'), 'b'], r'rows\[1\] is a str'),
    ([dict(stage='a'), dict(macs=1)], r'rows\[1\]\.stage'),
    ([dict(stage='a', latency_ms=float('nan'))], r'rows\[0\] \(a\)\.latency_ms'),
    ([dict(stage='a', top1='90')], r'\.top1'),
    ([dict(stage='a', sparsity_by_pattern=[0.5])], 'sparsity_by_pattern'),
])
def test_bad_rows_are_named(rows, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        write_recipe_report(str(tmp_path), rows)
    assert not os.listdir(tmp_path)


def test_relative_values_use_the_first_measured_stage():
    rows = normalise_rows([dict(stage='x', skipped='no data'),
                           dict(stage='a', macs=200, params=10),
                           dict(stage='b', macs=50, params=None)])
    assert rows[0]['relative']['macs'] is None
    assert rows[1]['relative']['macs'] == 1.0
    assert rows[2]['relative']['macs'] == 0.25
    assert rows[2]['relative']['params'] is None
