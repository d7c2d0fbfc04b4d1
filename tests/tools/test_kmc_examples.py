"""The examples/kmc files: the YAML templates parse and are accepted, the
demos run in quick mode."""
import json
import os

import pytest
import torch
import yaml

from helpers import PY, ROOT, run_tool
from helpers.amc import SEED_LIST, TEMPLATES, amc_env, kmc_resnet50


# -- templates and demos ---------------------------------------------------
def test_templates_parse_and_are_accepted():
    from mmrazor_ext.apis import load_pruning_config
    from mmrazor_ext.apis.mc_sparsity import load_config
    from mmrazor_ext.pruners import ChannelPruner
    from mmrazor_ext.search.amc_decisions import make_decisions
    path = os.path.join(TEMPLATES, 'pruning_template.yaml')
    raw = yaml.safe_load(open(path))
    assert list(raw) == ['app_args', 'amc_cfg', 'network', 'docker_cfg']
    cfg = load_pruning_config(path)
    assert cfg['layers'][:4] == SEED_LIST
    model = kmc_resnet50()
    graph = ChannelPruner(model, torch.randn(1, 3, 32, 32)).graph
    decisions = make_decisions(graph, model, cfg['layers'])
    assert len(decisions) == 32
    assert decisions[0].space == 'layer1.0.conv1'
    path = os.path.join(TEMPLATES, 'sparsity_template.yaml')
    raw = yaml.safe_load(open(path))
    assert list(raw) == ['app_args', 'asp_cfg', 'network']
    load_config(path)


def test_sparsity_template_on_resnet50():
    from mmrazor_ext.apis import MCSparsity
    from mmrazor_ext.sparsity import block_aligned, dense_weight
    model = kmc_resnet50()
    cfg = yaml.safe_load(open(os.path.join(TEMPLATES,
                                           'sparsity_template.yaml')))
    cfg['network']['resnet50_cifar'] = cfg['network']['resnet50_cifar'][:3]
    MCSparsity.sparse_model({'model_fn': model, 'config_file': cfg})
    sched = model.__dict__['_mc_sparsity']
    assert list(sched.layers) == [f'layer1.{b}.conv2' for b in range(3)]
    for name in sched.layers:
        w = dense_weight(model.get_submodule(name))
        assert block_aligned(w) and (w == 0).any(), name
    # nothing unlisted changes
    assert (dense_weight(model.get_submodule('layer1.0.conv3')) != 0).all()
    assert not hasattr(model.get_submodule('layer1.0.conv3'),
                       'weight_fake_sparse')


def test_sparsity_demo_quick(tmp_path, tiny_fmnist):
    wd = tmp_path / 'sparse'
    run_tool([PY, 'examples/kmc/resnet_cifar/sparsity_demo.py', '--quick',
              '--data-dir', tiny_fmnist, '--work-dir', str(wd)], timeout=300)
    res = json.loads((wd / 'results.json').read_text())
    assert res['global_sparsity'] == pytest.approx(0.5)
    assert len(res['layer_sparsity']) == 5
    assert res['reloaded_top1'] == res['retrained_top1']
    assert os.path.isfile(res['saved'])


def test_example_yaml_is_valid():
    """The demo's YAML parses and its layer list is a valid search space
    (the demo itself runs in ``test_kmc_demo_script_quick``)."""
    from mmrazor_ext.apis import load_pruning_config
    cfg = load_pruning_config(os.path.join(
        ROOT, 'examples/kmc/resnet_cifar/pruning_config.yaml'))
    assert cfg['amc_cfg']['ddpg_cfg'].initial_training_noise == 0.5
    env = amc_env(layers=cfg['layers'], target_density=0.5)
    assert len(env.decisions) == 9


def test_kmc_demo_script_quick(tmp_path, tiny_fmnist):
    """examples/kmc/resnet_cifar/pruning_demo.py (through its script) runs
    the Knight flow end to end: prune_model, load_pruned_model, fine-tune,
    save_pruned_model."""
    wd = tmp_path / 'kmc'
    run_tool(['bash', 'scripts/amc/run_kmc_pruning_demo.sh'],
             env=dict(QUICK='1', DATA_ROOT=tiny_fmnist, WORK_DIR=str(wd)),
             timeout=400)
    res = json.loads((wd / 'results.json').read_text())
    assert res['macs'] < 0.6 * res['dense_macs']
    assert os.path.exists(res['csv']) and os.path.exists(res['saved'])
    header = open(res['csv']).readline().strip().split(',')
    assert header == ['episode', 'ckpt_name', 'ind1', 'ind2', 'infer_time',
                      'op_num', 'total_macs', 'normalized_macs',
                      'normalized_nnz']
