"""tools/benchmark/accuracy_at_flops.py on tiny data: the table's columns,
and a killed run keeps its finished rows."""
import json

from helpers import PY, run_tool

TOOL = 'tools/benchmark/accuracy_at_flops.py'


def _args(data_root, out_dir, *extra):
    return [PY, TOOL, '--depth', '20', '--data-root', data_root,
            '--epochs', '1', '--batch-size', '16', '--targets', '0.5',
            '--metric-batches', '2', '--recon-batches', '2',
            '--out-dir', str(out_dir), *extra]


def test_rows_columns_and_resume(tmp_path, tiny_fmnist):
    methods = ['--methods', 'uniform_l1', 'uniform_l1_recon']
    run_tool(_args(tiny_fmnist, tmp_path, *methods))
    result = json.loads((tmp_path / 'accuracy_at_flops.json').read_text())
    rows = {r['method']: r for r in result['rows']}
    assert set(rows) == {'dense', 'uniform_l1', 'uniform_l1_recon'}
    for name in ('uniform_l1', 'uniform_l1_recon'):
        r = rows[name]
        assert 0.4 < r['macs_ratio'] < 0.6
        for col in ('top1_pruned', 'top1_bn', 'top1_finetuned'):
            assert 0 <= r[col] <= 100
    # only the reconstructing method has the column and its timing
    assert rows['uniform_l1']['top1_reconstructed'] is None
    assert rows['uniform_l1_recon']['top1_reconstructed'] is not None
    assert rows['uniform_l1_recon']['recon_seconds'] >= 0
    assert '| 0.500 | uniform_l1_recon |' in (
        tmp_path / 'accuracy_at_flops.md').read_text()
    # The same flags again: every row comes from rows_partial.json.
    proc = run_tool(_args(tiny_fmnist, tmp_path, *methods))
    assert proc.stdout.count('kept from') == 2
    again = json.loads((tmp_path / 'accuracy_at_flops.json').read_text())
    assert again['rows'] == result['rows']
    # Another budget (reconstruction batches) does not reuse them.
    proc = run_tool(_args(tiny_fmnist, tmp_path, '--methods', 'uniform_l1',
                          '--recon-batches', '1'))
    assert 'kept from' not in proc.stdout
    assert 'another budget' in proc.stdout
    # Nor does another divisor (the rows are measured with free widths
    # unless --divisor says otherwise).
    assert result['budget']['divisor'] == 1
    proc = run_tool(_args(tiny_fmnist, tmp_path, '--methods', 'uniform_l1',
                          '--divisor', 'auto'))
    assert 'kept from' not in proc.stdout
    assert 'another budget' in proc.stdout
    final = json.loads((tmp_path / 'accuracy_at_flops.json').read_text())
    assert final['budget']['divisor'] == 'auto'
