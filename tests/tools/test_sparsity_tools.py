"""tools/analysis/sparsity_report.py and tools/benchmark/sparse_overhead.py."""
import json

import torch

from helpers import load_tool
from helpers.models import resnet20
from mmrazor_ext.sparsity import build_sparse_scheduler


def test_sparsity_report_amba_and_2to4(tmp_path, capsys):
    report = load_tool('tools/analysis/sparsity_report.py')
    # An Amba stage checkpoint carries its layer MACs.
    model = resnet20()
    sched = build_sparse_scheduler(dict(scheduler=dict(
        type='AmbaLevelPruneScheduler',
        kwargs=dict(total_iters=2, sparsity_table=[60], save_dir=str(tmp_path),
                    default_input_shape=[1, 1, 28, 28]))))
    sched.prepare_sparse_model(model)
    sched.update(2)
    rep = report.main([str(tmp_path / 'global_sparse_rate_60.pth.tar'),
                       '--json', str(tmp_path / 'r.json')])
    assert abs(rep['global_sparsity'] - 0.6) <= 0.015
    assert rep['sparse_layers'] == 22
    assert rep['effective_macs'] < 0.6 * rep['dense_macs']
    assert json.load(open(tmp_path / 'r.json'))['dense_macs'] == sched.total_macs
    printed = capsys.readouterr().out
    assert 'global sparsity' in printed and 'MACs: dense' in printed
    # A 2:4 model: every eligible layer compliant, stem / fc are not.
    model = resnet20()
    amp = build_sparse_scheduler(dict(scheduler=dict(type='AmpereScheduler')))
    amp.prepare_sparse_model(model)
    torch.save({'state_dict': model.state_dict()}, tmp_path / 'amp.pth')
    rep = report.main([str(tmp_path / 'amp.pth')])
    by_name = {r['layer']: r for r in rep['layers']}
    assert all(by_name[n]['nm_2to4'] == 1.0 for n in amp.layers)
    assert by_name['fc']['nm_2to4'] < 1.0
    assert rep['dense_macs'] is None  # no MACs without --config


def test_sparse_overhead_benchmark_runs(capsys):
    bench = load_tool('tools/benchmark/sparse_overhead.py')
    res = bench.main(['--batch-size', '4', '--steps', '1', '--warmup', '0',
                      '--rounds', '1', '--variants', 'amba_70', 'ampere_2to4'])
    over = res['train_overhead']
    assert over['dense_s_per_step'] > 0 and over['amba_70']['ratio'] > 0
    if not torch.cuda.is_available():
        assert 'skipped' in res['semi_structured']
        assert 'skipped: no CUDA device' in capsys.readouterr().out
