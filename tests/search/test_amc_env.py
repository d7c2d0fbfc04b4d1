"""The AMC environment: MAC clamping, protocols, restoring the model,
group size, stochastic L1 rank, fm-reconstruction (search/amc_env.py)."""
import numpy as np
import pytest
import torch
from torch import nn

from helpers.amc import amc_data, amc_env, amc_resnet20, amc_val_fn


@pytest.mark.parametrize('density', [0.3, 0.5, 0.7])
def test_clamping_keeps_target_reachable(density):
    env = amc_env(target_density=density)
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
    up = amc_env(target_density=0.5, protocol='mac-constrained-experimental')
    for a in (1.0, 0.9, 0.2):
        up.reset()
        done = False
        while not done:
            _, _, done, info = up.step(a)
        assert info['total_macs'] <= 0.5 * up.dense_macs * 1.001
    free = amc_env(target_density=0.5, protocol='punish-agent')
    free.reset()
    done = False
    while not done:
        _, reward, done, info = free.step(0.95)
    # nothing clamps: keeping 95 % everywhere violates the budget, punished
    assert info['normalized_macs'] > 80
    assert reward == pytest.approx(-info['total_macs'] /
                                   (0.5 * free.dense_macs))


def test_env_restores_the_model_and_is_reproducible():
    model = amc_resnet20()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = amc_data()
    env = amc_env(model, val_fn=amc_val_fn(x, y), pruning_method='fm-reconstruction',
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
    env = amc_env(target_density=0.5, group_size=8)
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
        env = amc_env(target_density=0.5, pruning_method='stochastic-l1-rank',
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


def test_max_fm_points_caps_the_sampled_points():
    x, y = amc_data(32)
    default = amc_env(val_fn=amc_val_fn(x, y), pruning_method='fm-reconstruction')
    capped = amc_env(val_fn=amc_val_fn(x, y), pruning_method='fm-reconstruction',
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
        amc_env(max_fm_points=0)


def test_fm_reconstruction_beats_l1_rank():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()
    x_fit, _ = amc_data(64, seed=1)
    x_test, _ = amc_data(64, seed=2)
    with torch.no_grad():
        ref = model[:4](x_test)
    errors = {}
    for method in ('l1-rank', 'fm-reconstruction'):
        env = amc_env(model, val_fn=lambda m: (m(x_fit), {'ind1': 0,
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
