"""MCSparsity facade, tools/analysis/sparsity_report.py and
tools/benchmark/sparse_overhead.py."""
import importlib.util
import json
import os

import pytest
import torch
import torch.nn.functional as F
from test_sparsity import WideNet, batches, resnet20

from conftest import ROOT
from mmrazor_ext.apis import MCSparsity
from mmrazor_ext.sparsity import (
    SparsityConfigError,
    block_aligned,
    build_sparse_scheduler,
    dense_weight,
)

KNIGHT_YAML = """
app_args:
  arch: widenet
  dataset: synthetic
  device: 0
asp_cfg:
  sparsity_method: {method}
  target_sparsity: 0.5
network:
  widenet: [{layers}]
"""


def tool(path):
    spec = importlib.util.spec_from_file_location(
        os.path.basename(path)[:-3], os.path.join(ROOT, path))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_mc_sparsity_custom_pruner_save_load(tmp_path):
    cfg = tmp_path / 'sparsity_config.yaml'
    cfg.write_text(KNIGHT_YAML.format(method='CustomPruner',
                                      layers='conv2.weight, conv3.weight'))
    torch.manual_seed(0)
    model = WideNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    MCSparsity.sparse_model({'model_fn': model, 'optimizer': opt,
                             'config_file': str(cfg)})
    for x, y in batches(2, shape=(2, 3, 16, 16), classes=64):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()  # masks re-applied by the optimizer hook
    for name in ('conv2', 'conv3'):
        w = dense_weight(getattr(model, name))
        assert block_aligned(w) and (w == 0).any(), name
    assert (model.fc.weight != 0).all()  # not listed in network
    out = tmp_path / 'sparse.pth'
    MCSparsity.save_sparse_model(model, str(out), extras={'acc1': 12.5})
    fresh = WideNet()
    MCSparsity.load_sparse_model(fresh, str(out))
    x = torch.randn(2, 3, 16, 16)
    model.eval()
    fresh.eval()
    assert torch.allclose(model(x), fresh(x), atol=1e-6)
    assert torch.load(out, weights_only=True)['acc1'] == 12.5


def test_mc_sparsity_2to4_and_bad_yaml(tmp_path):
    cfg = tmp_path / 'a.yaml'
    cfg.write_text(KNIGHT_YAML.format(method='Pruner2to4', layers=''))
    model = WideNet()
    MCSparsity.sparse_model({'model_fn': model, 'config_file': str(cfg)})
    from mmrazor_ext.sparsity import nm_compliant
    assert nm_compliant(model.conv2.weight) and nm_compliant(model.fc.weight)
    bad = tmp_path / 'b.yaml'
    bad.write_text(KNIGHT_YAML.format(method='CustomPruner', layers='')
                   .replace('target_sparsity', 'target_sparsty'))
    with pytest.raises(SparsityConfigError, match='target_sparsty'):
        MCSparsity.sparse_model({'model_fn': WideNet(), 'config_file': str(bad)})
    missing = tmp_path / 'c.yaml'
    missing.write_text(KNIGHT_YAML.format(method='CustomPruner', layers='nope.weight'))
    with pytest.raises(SparsityConfigError, match='nope'):
        MCSparsity.sparse_model({'model_fn': WideNet(), 'config_file': str(missing)})


def test_mc_sparsity_network_lists_exactly_the_masked_weights(tmp_path):
    """Knight's sparsity ``network:`` names weights: exactly those layers
    get masks; an entry that cannot be sparsified is an error naming it,
    raised before the model is touched."""
    cfg = tmp_path / 'n.yaml'
    cfg.write_text(KNIGHT_YAML.format(method='Pruner2to4',
                                      layers='conv3.weight, fc'))
    model = WideNet()
    MCSparsity.sparse_model({'model_fn': model, 'config_file': str(cfg)})
    assert list(model.__dict__['_mc_sparsity'].layers) == ['conv3', 'fc']
    assert not hasattr(model.conv2, 'weight_fake_sparse')
    cases = [('big.weight', r"big.weight cannot be sparsified with "
              r"CustomPruner: kernel \(9, 9\) > 8"),
             ('conv1.weight', 'conv1.weight cannot be sparsified'),
             ('bn1.weight', "'bn1.weight' is a BatchNorm2d"),
             ('conv2.bias', "'conv2.bias': only weights"),
             ('conv2.weight, conv2', 'listed twice')]
    for layers, match in cases:
        cfg.write_text(KNIGHT_YAML.format(method='CustomPruner',
                                          layers=layers))
        model = WideNet()
        with pytest.raises(SparsityConfigError, match='network.widenet: .*'
                           + match):
            MCSparsity.sparse_model({'model_fn': model,
                                     'config_file': str(cfg)})
        assert not any(hasattr(m, 'weight_fake_sparse')
                       for m in model.modules())


def test_sparsity_report_amba_and_2to4(tmp_path, capsys):
    report = tool('tools/analysis/sparsity_report.py')
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
    bench = tool('tools/benchmark/sparse_overhead.py')
    res = bench.main(['--batch-size', '4', '--steps', '1', '--warmup', '0',
                      '--rounds', '1', '--variants', 'amba_70', 'ampere_2to4'])
    over = res['train_overhead']
    assert over['dense_s_per_step'] > 0 and over['amba_70']['ratio'] > 0
    if not torch.cuda.is_available():
        assert 'skipped' in res['semi_structured']
        assert 'skipped: no CUDA device' in capsys.readouterr().out


def test_hook_fills_masks_for_dense_checkpoint():
    from types import SimpleNamespace

    from mmengine.logging import MMLogger

    from mmrazor_ext.engine.hooks import SparsityHook
    model = resnet20()
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    hook = SparsityHook(dict(scheduler=dict(type='AmpereScheduler')))
    runner = SimpleNamespace(model=model, _resume=False,
                             logger=MMLogger.get_current_instance())
    hook.scheduler.prepare_sparse_model(model, init_masks=False)
    hook._prepared = True
    ckpt = {'state_dict': dense, 'meta': {}}
    hook.after_load_checkpoint(runner, ckpt)
    missing, unexpected = model.load_state_dict(ckpt['state_dict'], strict=True)
    assert not missing and not unexpected
    assert sum(k.endswith('weight_fake_sparse.mask') for k in ckpt['state_dict']) == 20
