"""AMC: environment clamping, rewards, DDPG, fm-reconstruction, the Knight-MC
``MCPruning`` facade and the ``AMCPruning`` algorithm on tiny data."""
import csv
import json
import math
import os
import sys

import numpy as np
import pytest
import torch
from torch import nn

from conftest import ROOT, run_tool, tiny_cfg_options

PY = os.path.join(ROOT, '.venv', 'bin', 'python')
AMC20 = os.path.join(ROOT, 'configs/amc/amc_resnet20_1xb128_fashionmnist.py')


def _data(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return x, y


def _val_fn(x, y):
    @torch.no_grad()
    def val(model):
        model.eval()
        out = model(x)
        top5 = out.topk(5, 1).indices
        return {'ind1': 100.0 * float((top5[:, 0] == y).float().mean()),
                'ind2': 100.0 * float((top5 == y[:, None]).any(1).float()
                                      .mean()),
                'vloss': float(nn.functional.cross_entropy(out, y))}
    return val


def _resnet20(seed=0):
    from mmrazor_ext.models import CifarResNet
    torch.manual_seed(seed)
    return CifarResNet(20, 10, 1).eval()


def _env(model=None, **kw):
    from mmrazor_ext.pruners import ChannelPruner
    from mmrazor_ext.search import AMCEnv
    model = model if model is not None else _resnet20()
    pruner = ChannelPruner(model, torch.randn(1, 1, 28, 28))
    kw.setdefault('val_fn', lambda m: {'ind1': 50.0, 'ind2': 80.0})
    return AMCEnv(pruner, **kw)


# -- environment ----------------------------------------------------------------
@pytest.mark.parametrize('density', [0.3, 0.5, 0.7])
def test_clamping_keeps_target_reachable(density):
    env = _env(target_density=density)
    budget = density * env.dense_macs
    rng = np.random.default_rng(0)
    policies = [lambda t: rng.random(), lambda t: 0.0, lambda t: 1.0,
                lambda t: float(t % 2), lambda t: rng.random()]
    for policy in policies:
        env.reset()
        done, t = False, 0
        while not done:
            _, _, done, info = env.step(policy(t))
            t += 1
            lo, hi = env.reachable_macs()
            # the budget stays inside what the rest of the episode can reach
            assert lo <= budget * 1.02 and hi >= budget * 0.98, (t, lo, hi)
        # the final model meets the target within 2 % (exact MAC count)
        assert abs(info['total_macs'] / budget - 1) <= 0.02
        assert info['total_macs'] == env.pruner.estimate_flops(info['subnet'])
        # the fast MAC model is the pruner's
        assert env.macs(info['subnet']) == pytest.approx(
            info['total_macs'], abs=1)
        # the exported model really has those MACs (and is a valid model)
        from mmrazor_ext.estimators import get_model_complexity
        cx = get_model_complexity(info['model'], torch.randn(1, 1, 28, 28))
        assert cx['flops'] == info['total_macs']
        assert all(0.05 <= a <= 0.95 for a in info['strategy'])
    env.close()


def test_upper_wall_and_unclamped_protocols():
    up = _env(target_density=0.5, protocol='mac-constrained-experimental')
    for a in (1.0, 0.9, 0.2):
        up.reset()
        done = False
        while not done:
            _, _, done, info = up.step(a)
        assert info['total_macs'] <= 0.5 * up.dense_macs * 1.001
    free = _env(target_density=0.5, protocol='punish-agent')
    free.reset()
    done = False
    while not done:
        _, reward, done, info = free.step(0.95)
    # nothing clamps: keeping 95 % everywhere violates the budget, punished
    assert info['normalized_macs'] > 80
    assert reward == pytest.approx(-info['total_macs'] /
                                   (0.5 * free.dense_macs))


def test_env_restores_the_model_and_is_reproducible():
    model = _resnet20()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = _data()
    env = _env(model, val_fn=_val_fn(x, y), pruning_method='fm-reconstruction',
               target_density=0.5, seed=3)
    runs = []
    for _ in range(2):
        env.reset()
        done = False
        while not done:
            _, _, done, info = env.step(0.5)
        runs.append(info)
        # reconstruction changed the consumers' weights during the episode
        assert any(not torch.equal(v, model.state_dict()[k])
                   for k, v in before.items() if k.endswith('weight'))
    assert runs[0]['ind1'] == runs[1]['ind1']
    assert runs[0]['strategy'] == runs[1]['strategy']
    env.close()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not any(m._forward_hooks or m._forward_pre_hooks
                   for m in model.modules())


def test_group_size_and_stochastic_l1_rank():
    env = _env(target_density=0.5, group_size=8)
    rng = np.random.default_rng(1)
    for _ in range(3):
        env.reset()
        done = False
        while not done:
            _, _, done, info = env.step(rng.random())
        assert all(int(m.sum()) % 8 == 0 for m in info['subnet'].values())
        assert abs(info['normalized_macs'] / 50 - 1) <= 0.02
    # stochastic-l1-rank: same actions, other channels; reproducible by seed
    kept = []
    for seed in (0, 0, 1):
        env = _env(target_density=0.5, pruning_method='stochastic-l1-rank',
                   seed=seed)
        env.reset()
        done = False
        while not done:
            _, _, done, info = env.step(0.5)
        kept.append(info['subnet'])
    name = 'backbone.layer3.0.conv1'
    assert torch.equal(kept[0][name], kept[1][name])
    assert not torch.equal(kept[0][name], kept[2][name])
    assert kept[0][name].sum() == kept[2][name].sum()


def test_network_list_input_channels_and_errors():
    """Knight semantics: a listed layer's inputs, the preceding filters."""
    from mmrazor_ext.models import CifarResNet
    model = CifarResNet(20, 10, 1).eval()
    listed = [f'backbone.layer{s}.{b}.conv2' for s in (1, 2, 3)
              for b in range(3)]
    env = _env(model, layers=listed, target_density=0.5)
    assert [d.layer for d in env.decisions] == listed
    assert [d.space for d in env.decisions] == \
        [n.replace('conv2', 'conv1') for n in listed]
    assert {d.role for d in env.decisions} == {'in'}
    # a block's conv1 reads the residual stream: an error naming the group
    with pytest.raises(ValueError, match=r"'backbone.layer2.1.conv1'.*"
                       'backbone.layer2.0.downsample.0'):
        _env(model, layers=listed + ['backbone.layer2.1.conv1'])
    with pytest.raises(KeyError, match="network: layer 'backbone.nope'"):
        _env(model, layers=['backbone.nope'])
    with pytest.raises(ValueError, match='network input'):
        _env(model, layers=['backbone.conv1'])
    with pytest.raises(ValueError, match="'fc'.*residual add"):
        _env(model, layers=['fc'])
    # pruning only three small layers cannot reach 20 % of the MACs
    with pytest.raises(ValueError, match='amc_cfg.target_density'):
        _env(model, layers=listed[:3], target_density=0.2)


def test_network_list_output_channels_residual_groups():
    """network_channels='output': filters of the listed layers; residual
    groups must be listed whole."""
    from mmrazor_ext.models import CifarResNet
    from mmrazor_ext.search.amc_decisions import NetworkList
    model = CifarResNet(20, 10, 1).eval()
    inner = [f'backbone.layer{s}.{b}.conv1' for s in (1, 2, 3)
             for b in range(3)]
    env = _env(model, layers=inner, target_density=0.5,
               network_channels='output')
    assert [d.layer for d in env.decisions] == inner
    # one residual group listed completely: one decision for the group
    group = ['backbone.layer2.0.conv2', 'backbone.layer2.0.downsample.0',
             'backbone.layer2.1.conv2', 'backbone.layer2.2.conv2']
    env = _env(model, layers=NetworkList(inner + group, 'output'),
               target_density=0.5)
    assert len(env.decisions) == len(inner) + 1
    env.reset()
    done = False
    while not done:
        _, _, done, info = env.step(0.5)
    assert info['subnet']['backbone.layer2.0.conv2'].sum() < 32
    # a group listed partly: the error names the layers left out (KMC note 2)
    with pytest.raises(ValueError, match='downsample'):
        _env(model, layers=inner + group[:1], network_channels='output')
    with pytest.raises(ValueError, match='cannot be pruned'):
        _env(model, layers=['fc'], network_channels='output')
    with pytest.raises(ValueError, match='network_channels'):
        _env(model, layers=inner, network_channels='filters')


def test_max_fm_points_caps_the_sampled_points():
    x, y = _data(32)
    default = _env(val_fn=_val_fn(x, y), pruning_method='fm-reconstruction')
    capped = _env(val_fn=_val_fn(x, y), pruning_method='fm-reconstruction',
                  max_fm_points=37)
    assert default.fm_points.keys() == capped.fm_points.keys()
    # 32 samples x 10 points per map: the default cap (>= 1000) keeps all
    assert max(default.fm_points.values()) == 320
    for name, n in capped.fm_points.items():
        assert n == min(37, default.fm_points[name]), name
        assert capped.chooser.features[name].shape[0] == n
    # the capped features still give a valid, reconstructing episode
    capped.reset()
    done = False
    while not done:
        _, _, done, info = capped.step(0.5)
    assert abs(info['normalized_macs'] / 50 - 1) <= 0.02
    capped.close()
    with pytest.raises(ValueError, match='max_fm_points'):
        _env(max_fm_points=0)


def test_fm_reconstruction_beats_l1_rank():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()
    x_fit, _ = _data(64, seed=1)
    x_test, _ = _data(64, seed=2)
    with torch.no_grad():
        ref = model[:4](x_test)
    errors = {}
    for method in ('l1-rank', 'fm-reconstruction'):
        env = _env(model, val_fn=lambda m: (m(x_fit), {'ind1': 0,
                                                       'ind2': 0})[1],
                   layers=['3'], target_density=0.6, pruning_method=method,
                   action_range=(0.05, 1.0))
        env.reset()
        _, _, done, info = env.step(0.5)
        assert done
        with torch.no_grad():
            out = model[:4](x_test)
        errors[method] = float((out - ref).norm() / ref.norm())
        env.close()
    assert errors['fm-reconstruction'] < 0.7 * errors['l1-rank'], errors


# -- rewards ----------------------------------------------------------------------
def test_reward_formulas():
    from mmrazor_ext.search import PROTOCOLS, compute_reward
    assert set(PROTOCOLS) == {'mac-constrained', 'accuracy-guaranteed',
                              'mac-constrained-experimental', 'punish-agent'}
    ind1, macs, dense, d = 72.5, 4.0e7, 1.0e8, 0.5
    assert compute_reward('mac-constrained', ind1, macs, dense, d) == 0.725
    assert compute_reward('accuracy-guaranteed', ind1, macs, dense, d) == \
        pytest.approx(-(1 - 0.725) * math.log(4.0e7))
    assert compute_reward('mac-constrained-experimental', ind1, macs, dense,
                          d) == pytest.approx(0.725 - abs(4.0e7 / 5.0e7 - 1))
    assert compute_reward('punish-agent', ind1, macs, dense, d) == 0.725
    assert compute_reward('punish-agent', ind1, 6.0e7, dense, d) == \
        pytest.approx(-1.2)
    # latency term: reward - w * t / t0
    assert compute_reward('mac-constrained', ind1, macs, dense, d, 3.0, 6.0,
                          0.2) == pytest.approx(0.725 - 0.1)
    with pytest.raises(ValueError, match='amc_cfg.protocol'):
        compute_reward('greedy', ind1, macs, dense, d)


# -- DDPG -------------------------------------------------------------------------
class _PeakEnv:
    """Four steps; the episode reward peaks when every action is 0.7."""

    state_dim = 3

    def reset(self):
        self.t, self.actions = 0, []
        return self._state(1.0)

    def _state(self, prev):
        return np.array([min(self.t, 3) / 3, 0.5, prev], np.float32)

    def step(self, a):
        self.actions.append(a)
        self.t += 1
        info = {'action': a}
        if self.t < 4:
            return self._state(a), 0.0, False, info
        info['reward'] = 1 - 4 * float(np.mean((np.array(self.actions) -
                                                0.7) ** 2))
        return self._state(a), info['reward'], True, info


def _train_peak(warmup, episodes, seed=2):
    from mmengine.logging import MMLogger

    from mmrazor_ext.search import DDPGAgent, run_amc_search
    MMLogger.get_instance('amc_test_quiet', log_level='WARNING')
    env = _PeakEnv()
    agent = DDPGAgent(env.state_dim, dict(
        bsize=64, tau=0.01, discount=1.0, hidden1=64, hidden2=64,
        warmup=warmup, num_training_episodes=episodes, lr_a=1e-3, lr_c=1e-3,
        seed=seed), (0.05, 0.95))
    history = run_amc_search(env, agent, logger='amc_test_quiet')
    state, actions = env.reset(), []
    for _ in range(4):
        actions.append(agent.act(state))
        state, _, _, _ = env.step(actions[-1])
    return agent, history, actions


def test_ddpg_learns_a_synthetic_reward():
    agent, history, actions = _train_peak(20, 150)
    assert len(history) == 170 and agent.updates == 150 * 4
    assert max(abs(a - 0.7) for a in actions) < 0.1, actions
    # the warm-up explores widely, the trained policy is near the optimum
    assert np.mean([h['reward'] for h in history[-10:]]) > 0.98


def test_ddpg_is_deterministic_and_checks_config():
    from mmrazor_ext.search import DDPGConfig
    a = _train_peak(3, 5)[2]
    b = _train_peak(3, 5)[2]
    assert a == b
    cfg = DDPGConfig.from_dict({'init_delta': 0.3, 'delta_decay': 0.9,
                                'epsilon': 50000})
    assert cfg.initial_training_noise == 0.3
    assert cfg.training_noise(2) == pytest.approx(0.3 * 0.81)
    with pytest.raises(KeyError, match='amc_cfg.ddpg_cfg.hiden1'):
        DDPGConfig.from_dict({'hiden1': 3})
    with pytest.raises(ValueError, match='amc_cfg.ddpg_cfg.tau'):
        DDPGConfig.from_dict({'tau': 0})
    with pytest.raises(ValueError, match='window_length'):
        DDPGConfig.from_dict({'window_length': 4})


def test_epsilon_decays_the_exploration_noise_linearly():
    from mmengine.logging import MMLogger

    from mmrazor_ext.search import DDPGAgent, DDPGConfig, run_amc_search
    cfg = DDPGConfig.from_dict({'epsilon': 10})
    assert [cfg.noise_scale(n) for n in (0, 5, 10, 20)] == [1, 0.5, 0, 0]
    assert DDPGConfig().noise_scale(10 ** 6) == 1  # default: off
    with pytest.raises(ValueError, match='amc_cfg.ddpg_cfg.epsilon'):
        DDPGConfig.from_dict({'epsilon': -1})

    class Env(_PeakEnv):
        """Records (executed action, the actor's action) of every step."""

        def step(self, a):
            self.log.append((a, self.agent.act(self.state)))
            self.state, r, done, info = super().step(a)
            return self.state, r, done, info

        def reset(self):
            self.log = []
            self.state = super().reset()
            return self.state

    MMLogger.get_instance('amc_test_quiet', log_level='WARNING')
    env = Env()
    # 1 warm-up episode, then 3 training episodes of 4 steps; epsilon = 6
    # training steps: the last episode explores with no noise at all
    agent = DDPGAgent(env.state_dim, dict(
        bsize=4, hidden1=8, hidden2=8, warmup=1, num_training_episodes=3,
        heatup_noise=0.3, initial_training_noise=0.4,
        training_noise_decay=0.5, epsilon=6, seed=0), (0.05, 0.95))
    env.agent = agent
    logs = []
    history = run_amc_search(env, agent, logger='amc_test_quiet',
                             callback=lambda ep, info: logs.append(env.log))
    assert [h['noise'] for h in history] == pytest.approx(
        [0.3, 0.4, 0.4 * 0.5 * (1 - 4 / 6), 0.0])
    assert all(a == pytest.approx(mu) for a, mu in logs[3])
    assert any(abs(a - mu) > 1e-3 for a, mu in logs[1])


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
    x, y = _data(48)
    val = _val_fn(x, y)
    model = _resnet20()
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
    fresh = _resnet20(seed=5)
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
    again = MCPruning.load_pruned_model(_resnet20(seed=7), path)
    torch.testing.assert_close(again.eval()(x), fresh(x))
    assert torch.load(path, weights_only=True)['acc1'] == 1.5
    with pytest.raises(RuntimeError, match='load_pruned_model'):
        MCPruning.save_pruned_model(_resnet20(), str(tmp_path / 'x.pth'))


def test_prune_model_with_measured_latency(tmp_path):
    from mmrazor_ext.apis import MCPruning
    x, y = _data(16)
    cfg = _yaml_cfg(tmp_path / 'out', save_top_k=1,
                    ddpg_cfg={'warmup': 1, 'num_training_episodes': 1,
                              'hidden1': 16, 'hidden2': 16})
    cfg['docker_cfg'] = {'run_latency': True, 'latency_repeats': 2}
    summary = MCPruning.prune_model({'model_fn': _resnet20,
                                     'val_fn': _val_fn(x, y),
                                     'config_file': cfg})
    row = summary['best']
    assert row['infer_time'] > 0 and row['op_num'] > 10
    assert summary['dense_latency_ms'] > 0


def test_latency_command_template(tmp_path):
    from mmrazor_ext.search import LatencyProvider
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 26 * 26, 10)).eval()
    script = ('import os, sys; assert sys.argv[1].endswith(".onnx"); '
              'assert os.path.getsize(sys.argv[1]) > 0; '
              'print("shape", sys.argv[2], "latency_ms:", 1.25)')
    cmd = f"{sys.executable} -c '{script}' {{onnx}} {{input_shape}}"
    lat = LatencyProvider((torch.randn(1, 1, 28, 28),), cmd=cmd)
    ms, ops = lat(model)
    assert ms == 1.25 and ops == 4
    with pytest.raises(ValueError, match='docker_cfg.latency_cmd'):
        LatencyProvider((torch.randn(1, 1, 28, 28),), cmd='bench {onnxx}')
    bad = LatencyProvider((torch.randn(1, 1, 28, 28),),
                          cmd=f"{sys.executable} -c 'import sys; "
                              "sys.exit(3)' {onnx}")
    with pytest.raises(RuntimeError, match='docker_cfg.latency_cmd'):
        bad(model)


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
            MCPruning.prune_model({'model_fn': _resnet20(),
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
        MCPruning.prune_model({'model_fn': _resnet20(), 'config_file': ok})
    with pytest.raises(KeyError, match="missing key 'ind1'"):
        MCPruning.prune_model({'model_fn': _resnet20(),
                               'val_fn': lambda m: {'ind2': 1.0},
                               'config_file': ok})


# -- mm algorithm ---------------------------------------------------------------------
def test_amc_script_quick_mode_and_resume(tmp_path, tiny_fmnist, tiny_baseline):
    wd = tmp_path / 'amc'
    run_tool(['bash', 'scripts/amc/run_amc_fashionmnist.sh'],
             env={'QUICK': '1', 'DATA_ROOT': tiny_fmnist,
                  'BASE_CKPT': tiny_baseline, 'WORK_DIR': str(wd),
                  'PYTHON': PY})
    for name in ('kmc-pruning.csv', 'amc-episodes.csv', 'amc_search.json',
                 'amc_best_subnet.json', 'pruned_model.pth', 'subnet.json'):
        assert (wd / name).is_file(), name
    report = json.loads((wd / 'report.json').read_text())
    assert report['metric'] == 'amc'
    assert abs(report['flops_ratio'] - 0.5) <= 0.01
    assert report['export_check']['ok']
    best = report['amc']['best']
    assert report['flops_after'] == best['total_macs']
    assert report['amc']['episodes'] == 4
    with open(wd / 'kmc-pruning.csv') as f:
        rows = list(csv.DictReader(f))
    assert rows[0]['ckpt_name'] == best['ckpt_name']
    assert (wd / rows[0]['ckpt_name']).is_file()
    # --resume continues fine-tuning without searching again
    proc = run_tool([
        PY, 'tools/train.py', AMC20, '--work-dir', str(wd), '--resume',
        *tiny_cfg_options(tiny_fmnist, max_epochs=2),
        f'model.init_checkpoint={tiny_baseline}',
        'model.amc_cfg.ddpg_cfg.warmup=2',
        'model.amc_cfg.ddpg_cfg.num_training_episodes=2',
        'model.calib_batches=2', 'model.reward_batches=2',
        'model.bn_recalib_batches=2'])
    log = proc.stdout + proc.stderr
    assert 'resumed after pruning step 1' in log
    assert 'AMC episode' not in log
    report2 = json.loads((wd / 'report.json').read_text())
    assert report2['flops_after'] == report['flops_after']


def test_amc_hook_is_an_engine_hook():
    from mmrazor_ext.engine.hooks import AMCPruningHook
    from mmrazor_ext.registry import HOOKS
    assert HOOKS.get('AMCPruningHook') is AMCPruningHook
    assert 'PruningHook' in [c.__name__ for c in AMCPruningHook.__mro__]
    assert AMCPruningHook.__module__ == 'mmrazor_ext.engine.hooks.amc_hook'


def test_example_yaml_is_valid():
    """The demo's YAML parses and its layer list is a valid search space
    (the demo itself runs in ``test_kmc_demo_script_quick``)."""
    from mmrazor_ext.apis import load_pruning_config
    cfg = load_pruning_config(os.path.join(
        ROOT, 'examples/kmc/resnet_cifar/pruning_config.yaml'))
    assert cfg['amc_cfg']['ddpg_cfg'].initial_training_noise == 0.5
    env = _env(layers=cfg['layers'], target_density=0.5)
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
