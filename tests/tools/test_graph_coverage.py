"""tools/analysis/graph_coverage.py on a few models (the full sweep over
torchvision is a script run, see its docstring)."""
import json

import pytest

from tools.analysis import graph_coverage


@pytest.mark.parametrize('name', ['cifar_resnet20', 'imgcls_cifar20',
                                  'mmpretrain_mobilenet_v2', 'squeezenet1_0'])
def test_check_model_passes(name):
    row = graph_coverage.check_model(name)
    assert row['status'] == 'ok', row
    assert 0 < row['flops_ratio'] < 0.6
    assert row['max_abs_diff'] is not None and row['build_s'] > 0


def test_failure_is_reported_not_raised(monkeypatch):
    def broken(name):
        raise RuntimeError('boom')
    monkeypatch.setattr(graph_coverage, 'build', broken)
    row = graph_coverage.check_model('whatever')
    assert row['status'] == 'error' and 'boom' in row['error']


def test_main_writes_table_and_json(tmp_path, capsys):
    out = tmp_path / 'cov.json'
    rc = graph_coverage.main(['--models', 'cifar_resnet20', 'alexnet',
                              '--out', str(out)])
    assert rc == 0
    rows = json.loads(out.read_text())
    assert [r['model'] for r in rows] == ['cifar_resnet20', 'alexnet']
    text = capsys.readouterr().out
    assert 'passed 2/2' in text and 'alexnet' in text
