"""Knight-MC semantics (seeds/003): what ``network:`` means for MCPruning
("KMC注意事项" 1-2: a listed layer's input channels, the preceding filters
follow, anything further is an error) and MCSparsity (the listed weights
get masks), ProbMask needing its scheduler, and the examples/kmc files."""
import csv
import json
import os

import pytest
import torch
import torchvision
import yaml
from torch import nn

from conftest import ROOT, run_tool

PY = os.path.join(ROOT, '.venv', 'bin', 'python')
TEMPLATES = os.path.join(ROOT, 'examples', 'kmc', 'config')
SEED_LIST = ['layer1.0.conv2', 'layer1.0.conv3', 'layer1.1.conv2',
             'layer1.1.conv3']


def _resnet50():
    torch.manual_seed(0)
    return torchvision.models.resnet50(num_classes=10).eval()


def _val_fn():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (4,), generator=g)

    @torch.no_grad()
    def val(model):
        model.eval()
        out = model(x)
        return {'ind1': 100.0 * float((out.argmax(1) == y).float().mean()),
                'ind2': 50.0}
    return val


def _pruning_cfg(tmp_path, layers, **app):
    return {
        'app_args': dict(arch='resnet50', input_shape=[1, 3, 32, 32],
                         device='cpu', output_dir=str(tmp_path / 'out'),
                         **app),
        # the four listed layers hold ~9 % of the MACs at 32x32
        'amc_cfg': dict(target_density=0.96, save_top_k=1,
                        ddpg_cfg=dict(warmup=1, num_training_episodes=1,
                                      bsize=4)),
        'network': {'resnet50': layers}}


def _prune(tmp_path, layers, **app):
    from mmrazor_ext.apis import MCPruning
    return MCPruning.prune_model({
        'model_fn': _resnet50(), 'val_fn': _val_fn(),
        'config_file': _pruning_cfg(tmp_path, layers, **app)})


def _widths(model, names):
    return {n: (model.get_submodule(n).in_channels,
                model.get_submodule(n).out_channels) for n in names}


# -- MCPruning: Knight input-channel semantics -----------------------------------
def test_seed_resnet50_list_prunes_the_preceding_filters(tmp_path):
    from mmrazor_ext.apis import MCPruning
    summary = _prune(tmp_path, SEED_LIST)
    rows = list(csv.DictReader(open(tmp_path / 'out' / 'kmc-pruning.csv')))
    assert rows and rows[0]['ckpt_name'] == summary['best']['ckpt_name']
    model = _resnet50()
    MCPruning.load_pruned_model(model, summary['best_checkpoint'])
    w = _widths(model, [f'layer1.{b}.conv{c}' for b in range(3)
                        for c in (1, 2, 3)] + ['layer1.0.downsample.0'])
    for b in (0, 1):
        c1, c2, c3 = (w[f'layer1.{b}.conv{c}'] for c in (1, 2, 3))
        # conv1 / conv2 lost filters; the listed conv2 / conv3 lost the
        # matching inputs; nothing else changed
        assert c1[1] < 64 and c2[0] == c1[1], (b, c1, c2)
        assert c2[1] < 64 and c3[0] == c2[1], (b, c2, c3)
        assert c1[0] == 256 if b else c1[0] == 64
        assert c3[1] == 256
    assert w['layer1.2.conv1'] == (256, 64) and w['layer1.2.conv2'] == \
        (64, 64) and w['layer1.0.downsample.0'] == (64, 256)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize('listed,named', [
    ('layer1.1.conv1', ['layer1.0.downsample.0', 'layer2.0.conv1']),
    ('layer2.0.conv1', ['layer1.0.conv3', 'layer1.1.conv1']),
    ('layer1.0.conv1', ['layer1.0.downsample.0']),
    ('fc', ['layer4.2.conv3']),
])
def test_reaching_further_is_an_error_naming_the_layers(tmp_path, listed,
                                                         named):
    with pytest.raises(ValueError) as err:
        _prune(tmp_path, SEED_LIST[:2] + [listed])
    msg = str(err.value)
    assert msg.startswith('network.resnet50:') and repr(listed) in msg
    for name in named:
        assert name in msg, (name, msg)
    assert not (tmp_path / 'out' / 'kmc-pruning.csv').exists()


def test_concat_grouped_and_input_layers_are_errors():
    from mmrazor_ext.pruners import ChannelPruner
    from mmrazor_ext.search.amc_decisions import make_decisions

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1)
            self.b = nn.Conv2d(3, 8, 3, padding=1)
            self.c = nn.Conv2d(16, 16, 3, padding=1)
            self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
            self.d = nn.Conv2d(16, 8, 1)
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            x = self.c(torch.cat([self.a(x), self.b(x)], 1))
            x = self.d(self.dw(torch.relu(x)))
            return self.fc(x.mean((2, 3)))

    model = Net().eval()
    graph = ChannelPruner(model, torch.randn(1, 3, 8, 8)).graph
    with pytest.raises(ValueError, match=r"'c'.* several layers \(a, b"):
        make_decisions(graph, model, ['c'])
    with pytest.raises(ValueError, match=r"'d'.*filters of c, dw.*grouped"):
        make_decisions(graph, model, ['d'])
    with pytest.raises(ValueError, match="'a'.*network input"):
        make_decisions(graph, model, ['a'])
    [dec] = make_decisions(graph, model, ['fc'])
    assert (dec.space, dec.layer, dec.role) == ('d', 'fc', 'in')
    # the output option keeps the old meaning
    [dec] = make_decisions(graph, model, ['d'], channels='output')
    assert (dec.space, dec.layer, dec.role) == ('d', 'd', 'out')


def test_output_channels_option(tmp_path):
    from mmrazor_ext.apis import MCPruning, load_pruning_config
    cfg = load_pruning_config(_pruning_cfg(tmp_path, SEED_LIST[:1]))
    assert cfg['layers'].channels == 'input'
    summary = _prune(tmp_path, ['layer1.0.conv1', 'layer1.0.conv2'],
                     network_channels='output')
    model = _resnet50()
    MCPruning.load_pruned_model(model, summary['best_checkpoint'])
    w = _widths(model, ['layer1.0.conv1', 'layer1.0.conv2',
                        'layer1.0.conv3'])
    assert w['layer1.0.conv1'][1] < 64 and w['layer1.0.conv2'][1] < 64
    assert w['layer1.0.conv3'][1] == 256
    # the seed's list read as output channels hits the residual group
    with pytest.raises(ValueError, match='layer1.0.conv3'):
        _prune(tmp_path, SEED_LIST, network_channels='output')
    with pytest.raises(ValueError, match='app_args.network_channels'):
        load_pruning_config(_pruning_cfg(tmp_path, SEED_LIST,
                                         network_channels='filters'))


# -- templates and demos ------------------------------------------------------------
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
    model = _resnet50()
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
    model = _resnet50()
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


# -- ProbMask needs its scheduler ------------------------------------------------
@pytest.mark.parametrize('scheduler', [
    dict(type='BaseScheduler'),
    dict(type='AmbaLevelPruneScheduler',
         kwargs=dict(total_iters=9, sparsity_table=[30])),
])
def test_probmask_under_another_scheduler_is_an_error(scheduler):
    from mmrazor_ext.sparsity import (
        BaseScheduler,
        ProbMaskFakeSparse,
        SparsityConfigError,
        build_sparse_scheduler,
    )
    with pytest.raises(SparsityConfigError,
                       match=r'mask_generator.type: ProbMaskGenerator needs '
                             r'scheduler.type ProbMaskScheduler'):
        build_sparse_scheduler(dict(
            scheduler=scheduler,
            mask_generator=dict(type='ProbMaskGenerator'),
            fake_sparse=dict(type='ProbMaskFakeSparse')))
    with pytest.raises(SparsityConfigError,
                       match='fake_sparse.type: ProbMaskFakeSparse needs'):
        BaseScheduler(fake_sparse=(ProbMaskFakeSparse, {}))
    # the right scheduler builds
    build_sparse_scheduler(dict(scheduler=dict(
        type='ProbMaskScheduler',
        kwargs=dict(total_iters=10, target_sparsity=0.5))))
