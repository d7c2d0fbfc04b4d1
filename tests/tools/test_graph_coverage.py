"""tools/analysis/graph_coverage.py on a few models (the full sweep over
torchvision is a script run, see its docstring)."""
import json

import pytest
import torch

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


# -- --zoo timm: outcome per family, no silent no-op -------------------------
class _Pinned(torch.nn.Module):
    """Its only conv is pinned by an op without a rule (cumsum)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.cumsum(self.conv(x), 1).mean((2, 3)))


def test_timm_zoo_nothing_prunable_is_a_named_error(monkeypatch):
    monkeypatch.setattr(graph_coverage, 'build_timm',
                        lambda name: (_Pinned(), torch.randn(1, 3, 8, 8)))
    row = graph_coverage.check_model('pinned', zoo='timm')
    assert row['outcome'] == 'named error', row
    assert row['error'].startswith('PinnedChannelsError')
    assert 'cumsum' in row['error']


def test_timm_zoo_rows_and_table(tmp_path, monkeypatch):
    def net(name):
        torch.manual_seed(0)
        return (torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(),
            torch.nn.Conv2d(16, 16, 3), torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(), torch.nn.Linear(16, 4)),
            torch.randn(1, 3, 12, 12))
    monkeypatch.setattr(graph_coverage, 'build_timm', net)
    rc = graph_coverage.main(['--zoo', 'timm', '--models', 'a', 'b',
                              '--out-dir', str(tmp_path)])
    assert rc == 0
    rows = json.loads((tmp_path / 'coverage.json').read_text())
    assert [r['outcome'] for r in rows] == ['pruned', 'pruned']
    assert rows[0]['flops_ratio'] <= 0.75 and rows[0]['max_abs_diff'] < 1e-4
    md = (tmp_path / 'coverage.md').read_text()
    assert '| family | model | status |' in md and 'pruned: 2' in md


def test_outcomes_and_size_order():
    base = {'status': 'ok', 'flops_ratio': 0.5, 'error': ''}
    assert graph_coverage.outcome_of(base) == 'pruned'
    assert graph_coverage.outcome_of({**base, 'flops_ratio': 0.9}) == 'weak'
    assert graph_coverage.outcome_of(
        {**base, 'status': 'no prunable channels', 'flops_ratio': None}) \
        == 'silent no-op'
    assert graph_coverage.outcome_of(
        {**base, 'error': 'UnsupportedOpError: x'}) == 'named error'
    assert graph_coverage.outcome_of(
        {**base, 'error': 'RuntimeError: x'}) == 'crash'
    names = ['convnext_base', 'convnext_atto', 'convnext_tiny',
             'resnet50', 'resnet18']
    assert sorted(names, key=graph_coverage.size_key)[:2] == \
        ['convnext_atto', 'convnext_tiny']
    assert sorted(['resnet50', 'resnet18'],
                  key=graph_coverage.size_key)[0] == 'resnet18'


class _ZeroHead(torch.nn.Module):
    """Prunable convs, a zero-initialised head (timm's Hiera, MLP-Mixer)."""

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 16, 3)
        self.c2 = torch.nn.Conv2d(16, 16, 3)
        self.fc = torch.nn.Linear(16, 4)
        torch.nn.init.zeros_(self.fc.weight)
        torch.nn.init.zeros_(self.fc.bias)

    def forward(self, x):
        return self.fc(self.c2(self.c1(x).relu()).relu().mean((2, 3)))


def test_zero_head_is_perturbed_so_the_check_compares_something(monkeypatch):
    monkeypatch.setattr(graph_coverage, 'build_timm',
                        lambda name: (_ZeroHead(), torch.randn(1, 3, 8, 8)))
    row = graph_coverage.check_model('zero_head', zoo='timm')
    assert row['outcome'] == 'pruned' and row['vacuous'] is False, row
    # a check that compared only zeros is its own outcome, never 'pruned'
    assert graph_coverage.outcome_of(dict(row, vacuous=True)) == \
        'vacuous check'
