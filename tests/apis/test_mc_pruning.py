"""The Knight-MC pruning facade (apis/mc_pruning.py): prune_model with
its CSV, checkpoints, latency and reload; bad YAML names the field;
the ``network:`` list prunes the filters before the listed layers
("KMC注意事项" 1-2) and anything further is an error."""
import csv

import pytest
import torch
from torch import nn

from helpers.amc import (
    SEED_LIST,
    amc_data,
    amc_resnet20,
    amc_val_fn,
    kmc_resnet50,
    kmc_val_fn,
)


# -- Knight-MC facade -----------------------------------------------------------------
def _yaml_cfg(out_dir, **amc):
    cfg = {'app_args': {'arch': 'r20', 'dataset': 'fmnist',
                        'input_shape': [1, 1, 28, 28], 'device': 'cpu',
                        'output_dir': str(out_dir)},
           'amc_cfg': {'protocol': 'mac-constrained',
                       'pruning_method': 'l1-rank', 'target_density': 0.5,
                       'save_top_k': 2,
                       'ddpg_cfg': {'warmup': 3, 'num_training_episodes': 3,
                                    'bsize': 16, 'hidden1': 32,
                                    'hidden2': 32}},
           'docker_cfg': {'run_latency': False}}
    cfg['amc_cfg'].update(amc)
    return cfg


def _write_yaml(path, cfg):
    import yaml
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_prune_model_csv_checkpoints_and_reload(tmp_path):
    from mmrazor_ext.apis import MCPruning
    from mmrazor_ext.estimators import get_model_complexity
    x, y = amc_data(48)
    val = amc_val_fn(x, y)
    model = amc_resnet20()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = _write_yaml(tmp_path / 'cfg.yaml', _yaml_cfg(
        tmp_path / 'out', pruning_method='fm-reconstruction'))
    summary = MCPruning.prune_model({'model_fn': model, 'val_fn': val,
                                     'config_file': config})
    assert summary['episodes'] == 6
    # the user's model is given back unchanged
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    with open(tmp_path / 'out' / 'kmc-pruning.csv') as f:
        rows = list(csv.reader(f))
    assert rows[0] == ['episode', 'ckpt_name', 'ind1', 'ind2', 'infer_time',
                       'op_num', 'total_macs', 'normalized_macs',
                       'normalized_nnz']
    assert len(rows) == 3  # header + save_top_k
    for row in rows[1:]:
        r = dict(zip(rows[0], row))
        assert (tmp_path / 'out' / r['ckpt_name']).is_file()
        assert r['infer_time'] == 'none' and r['op_num'] == 'none'
        assert abs(float(r['normalized_macs']) - 50) <= 1.0
        assert 0 < float(r['normalized_nnz']) < 100
    with open(tmp_path / 'out' / 'amc-episodes.csv') as f:
        episodes = list(csv.DictReader(f))
    assert len(episodes) == 6
    reward = {e['episode']: float(e['reward']) for e in episodes}
    kept = [reward[r[0]] for r in rows[1:]]
    # best reward first, and the best episode is kept
    assert kept == sorted(kept, reverse=True)
    assert kept[0] == max(reward.values())

    # load_pruned_model rebuilds the episode's model in a fresh model object
    best = dict(zip(rows[0], rows[1]))
    fresh = amc_resnet20(seed=5)
    params = list(fresh.parameters())
    optimizer = torch.optim.SGD(params, lr=0.1)  # created before (Knight)
    same = MCPruning.load_pruned_model(fresh, str(tmp_path / 'out' /
                                                  best['ckpt_name']))
    assert same is fresh
    res = val(fresh)
    assert f"{res['ind1']:.4f}" == best['ind1']
    assert f"{res['ind2']:.4f}" == best['ind2']
    ep = next(e for e in episodes if e['episode'] == best['episode'])
    assert f"{res['vloss']:.4f}" == ep['vloss']
    macs = get_model_complexity(fresh, torch.randn(1, 1, 28, 28))['flops']
    assert macs == int(best['total_macs'])
    # the optimizer created before the call trains the pruned model
    assert all(p is q for p, q in zip(params, fresh.parameters()))
    w0 = fresh.fc.weight.detach().clone()
    fresh.train()
    nn.functional.cross_entropy(fresh(x), y).backward()
    optimizer.step()
    assert not torch.equal(w0, fresh.fc.weight)
    # save / load round trip
    fresh.eval()
    path = MCPruning.save_pruned_model(fresh, str(tmp_path / 'ft.pth'),
                                       {'acc1': 1.5})
    again = MCPruning.load_pruned_model(amc_resnet20(seed=7), path)
    torch.testing.assert_close(again.eval()(x), fresh(x))
    assert torch.load(path, weights_only=True)['acc1'] == 1.5
    with pytest.raises(RuntimeError, match='load_pruned_model'):
        MCPruning.save_pruned_model(amc_resnet20(), str(tmp_path / 'x.pth'))


def test_prune_model_with_measured_latency(tmp_path):
    from mmrazor_ext.apis import MCPruning
    x, y = amc_data(16)
    cfg = _yaml_cfg(tmp_path / 'out', save_top_k=1,
                    ddpg_cfg={'warmup': 1, 'num_training_episodes': 1,
                              'hidden1': 16, 'hidden2': 16})
    cfg['docker_cfg'] = {'run_latency': True, 'latency_repeats': 2}
    summary = MCPruning.prune_model({'model_fn': amc_resnet20,
                                     'val_fn': amc_val_fn(x, y),
                                     'config_file': cfg})
    row = summary['best']
    assert row['infer_time'] > 0 and row['op_num'] > 10
    assert summary['dense_latency_ms'] > 0


def test_bad_yaml_and_need_args_name_the_field(tmp_path):
    from mmrazor_ext.apis import MCPruning, load_pruning_config
    ok = _yaml_cfg(tmp_path)
    load_pruning_config(ok)
    cases = [
        ({'protocol': 'greedy'}, 'amc_cfg.protocol'),
        ({'action_range': [0.0, 0.9]}, r'amc_cfg.action_range'),
        ({'action_range': [0.1, 1.5]}, r'amc_cfg.action_range'),
        ({'action_range': [0.9, 0.1]}, r'amc_cfg.action_range'),
        ({'pruning_method': 'l3'}, 'amc_cfg.pruning_method'),
        ({'target_density': 1.5}, 'amc_cfg.target_density'),
        ({'agent_algo': 'PPO'}, 'amc_cfg.agent_algo'),
        ({'colour': 1}, 'amc_cfg.colour'),
    ]
    for amc, field in cases:
        cfg = _yaml_cfg(tmp_path, **amc)
        with pytest.raises((KeyError, ValueError), match=field):
            load_pruning_config(cfg)
        # the same through a YAML file and prune_model
        path = _write_yaml(tmp_path / 'bad.yaml', cfg)
        with pytest.raises((KeyError, ValueError), match=field):
            MCPruning.prune_model({'model_fn': amc_resnet20(),
                                   'val_fn': lambda m: {},
                                   'config_file': path})
    cfg = _yaml_cfg(tmp_path)
    del cfg['app_args']['input_shape']
    with pytest.raises(KeyError, match='app_args.input_shape'):
        load_pruning_config(cfg)
    cfg = _yaml_cfg(tmp_path)
    cfg['network'] = {'other': ['backbone.conv1']}
    with pytest.raises(KeyError, match='network'):
        load_pruning_config(cfg)
    # need_args without val_fn; val_fn without ind1
    with pytest.raises(KeyError, match='need_args.val_fn'):
        MCPruning.prune_model({'model_fn': amc_resnet20(), 'config_file': ok})
    with pytest.raises(KeyError, match="missing key 'ind1'"):
        MCPruning.prune_model({'model_fn': amc_resnet20(),
                               'val_fn': lambda m: {'ind2': 1.0},
                               'config_file': ok})


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
        'model_fn': kmc_resnet50(), 'val_fn': kmc_val_fn(),
        'config_file': _pruning_cfg(tmp_path, layers, **app)})


def _widths(model, names):
    return {n: (model.get_submodule(n).in_channels,
                model.get_submodule(n).out_channels) for n in names}


# -- MCPruning: Knight input-channel semantics -----------------------------
def test_seed_resnet50_list_prunes_the_preceding_filters(tmp_path):
    from mmrazor_ext.apis import MCPruning
    summary = _prune(tmp_path, SEED_LIST)
    rows = list(csv.DictReader(open(tmp_path / 'out' / 'kmc-pruning.csv')))
    assert rows and rows[0]['ckpt_name'] == summary['best']['ckpt_name']
    model = kmc_resnet50()
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


def test_output_channels_option(tmp_path):
    from mmrazor_ext.apis import MCPruning, load_pruning_config
    cfg = load_pruning_config(_pruning_cfg(tmp_path, SEED_LIST[:1]))
    assert cfg['layers'].channels == 'input'
    summary = _prune(tmp_path, ['layer1.0.conv1', 'layer1.0.conv2'],
                     network_channels='output')
    model = kmc_resnet50()
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
