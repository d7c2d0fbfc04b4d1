"""ChannelPruner seed API on real CNNs: sampling, export, FLOPs, save/load."""
import json

import pytest
import torch
import torchvision
from torch import nn

from helpers.models import randomise
from mmrazor_ext.estimators import get_model_complexity
from mmrazor_ext.models import CifarResNet
from mmrazor_ext.pruners import ChannelPruner, load_subnet
from mmrazor_ext.registry import METRICS, PRUNERS

TORCHVISION = ['resnet18', 'resnet50', 'mobilenet_v2', 'mobilenet_v3_small',
               'densenet121', 'efficientnet_b0', 'googlenet',
               'shufflenet_v2_x0_5', 'regnet_y_400mf', 'convnext_tiny']


def _build(name):
    torch.manual_seed(0)
    if name.startswith('cifar'):
        return randomise(CifarResNet(int(name[5:]))), torch.randn(1, 3, 32, 32)
    model = torchvision.models.get_model(name, weights=None)
    return randomise(model), torch.randn(1, 3, 64, 64)


@pytest.mark.parametrize('name', ['cifar20', 'cifar56'] + TORCHVISION)
def test_prune_export_equivalent_and_smaller(name):
    model, x = _build(name)
    pruner = ChannelPruner(model, x)
    assert pruner.channel_spaces
    f0 = get_model_complexity(model, x)['flops']
    scores = pruner.get_metric_local('l1')
    for sample in (pruner.sample_subnet_uniform, pruner.sample_subnet_diff):
        subnet = sample(0.5, scores)
        pruner.set_subnet(subnet)
        small = pruner.export()
        report = pruner.last_export_report
        assert report['ok'] and report['rel_diff'] <= 1e-5, report
        cx = get_model_complexity(small, x)
        f1 = cx['flops']
        assert f1 < f0
        assert pruner.estimate_flops(subnet) == pytest.approx(f1, rel=1e-6)
        assert pruner.estimate_params(subnet) == cx['params']
        # the exported model is an ordinary module of the same class
        assert type(small) is type(model)
        with torch.no_grad():
            ref = model(x)  # masked model
            out = small(x)
        assert (ref - out).abs().max() <= 1e-5 * ref.abs().max()
    pruner.clear_subnet()


def _random_ratios(pruner, gen):
    return {n: float(torch.rand(1, generator=gen)) * 0.95
            for n in pruner.channel_spaces}


@pytest.mark.slow  # ~20-60 s on 2 idle cores; part of `make test`
@pytest.mark.parametrize('name,n_subnets', [('resnet20', 200),
                                            ('mobilenet_v2', 200)])
def test_random_nonuniform_subnets_always_export(name, n_subnets):
    torch.manual_seed(0)
    if name == 'resnet20':
        model = randomise(CifarResNet(20))
    else:
        model = randomise(torchvision.models.mobilenet_v2(width_mult=0.5))
    x = torch.randn(1, 3, 32, 32)
    pruner = ChannelPruner(model, x)
    gen = torch.Generator().manual_seed(1)
    worst = 0.0
    for i in range(n_subnets):
        scores = {n: torch.rand(s.num_channels, generator=gen)
                  for n, s in pruner.channel_spaces.items()}
        subnet = pruner.sample_subnet_nonuni(_random_ratios(pruner, gen),
                                             scores)
        pruner.set_subnet(subnet)
        small = pruner.export()  # raises ExportError if not equivalent
        worst = max(worst, pruner.last_export_report['rel_diff'])
        if i % 50 == 0:  # exported width matches the mask
            kept = sum(int(m.sum()) for m in subnet.values())
            total = sum(m.numel() for m in subnet.values())
            assert kept < total
            n_small = sum(p.numel() for p in small.parameters())
            assert n_small < sum(p.numel() for p in model.parameters())
    assert worst <= 1e-5


def test_ratio_validation():
    pruner = ChannelPruner(CifarResNet(20), torch.randn(1, 3, 32, 32))
    for bad in (-0.1, 1.0, 1.5, float('nan')):
        with pytest.raises(ValueError, match=repr(bad) if bad == bad
                           else 'nan'):
            pruner.sample_subnet_uniform(bad)
        with pytest.raises(ValueError):
            pruner.sample_subnet_diff(bad)
    name = next(iter(pruner.channel_spaces))
    with pytest.raises(ValueError, match='1.2'):
        pruner.sample_subnet_nonuni({name: 1.2})
    with pytest.raises(KeyError, match='nope'):
        pruner.sample_subnet_nonuni({'nope': 0.1})
    # ratio 0 keeps everything
    sub = pruner.sample_subnet_uniform(0.0)
    assert all(bool(m.all()) for m in sub.values())


def test_uniform_counts_divisor_min_channels_and_scores():
    model = CifarResNet(20)
    x = torch.randn(1, 3, 32, 32)
    pruner = ChannelPruner(model, x, divisor=8, min_channels=8)
    scores = pruner.get_metric_local('l1')
    sub = pruner.sample_subnet_uniform(0.7, scores)
    for name, mask in sub.items():
        kept = int(mask.sum())
        assert kept % 8 == 0 and kept >= 8
        # the highest-scored units are the kept ones
        s = scores[name]
        assert s[mask].min() >= s[~mask].max() if (~mask).any() else True
    plain = ChannelPruner(model, x)
    sub = plain.sample_subnet_uniform(0.5)
    assert all(int(m.sum()) == m.numel() // 2 for m in sub.values())


def test_diff_uses_one_global_threshold():
    # divisor=1: the seed's exact ratio (the default rounds wide spaces)
    pruner = ChannelPruner(CifarResNet(20), torch.randn(1, 3, 32, 32),
                           divisor=1)
    names = list(pruner.channel_spaces)
    gen = torch.Generator().manual_seed(0)
    scores = {n: torch.rand(pruner.channel_spaces[n].num_channels,
                            generator=gen) for n in names}
    # one space with uniformly low normalised scores loses most channels
    scores[names[1]] = scores[names[1]] * 0.01 + torch.linspace(
        0.0, 1.0, scores[names[1]].numel()) ** 8
    sub = pruner.sample_subnet_diff(0.4, scores)
    total = sum(m.numel() for m in sub.values())
    removed = sum(int((~m).sum()) for m in sub.values())
    assert abs(removed / total - 0.4) < 0.05
    frac = {n: float(m.float().mean()) for n, m in sub.items()}
    assert frac[names[1]] < min(v for n, v in frac.items() if n != names[1])


@pytest.mark.parametrize('mode', ['uniform', 'global'])
def test_sample_subnet_for_flops_hits_target(mode):
    model = randomise(CifarResNet(56))
    x = torch.randn(1, 3, 32, 32)
    pruner = ChannelPruner(model, x)
    scores = pruner.get_metric_local('l1')
    sub = pruner.sample_subnet_for_flops(0.5, scores, mode=mode)
    rep = pruner.last_flops_report
    assert abs(rep['exported_ratio'] / 0.5 - 1) <= 0.01, rep
    assert rep['exported_flops'] == rep['estimated_flops']
    pruner.set_subnet(sub)
    small = pruner.export()
    f1 = get_model_complexity(small, x)['flops']
    assert abs(f1 / pruner.original_flops / 0.5 - 1) <= 0.01
    with pytest.raises(ValueError, match='1.5'):
        pruner.sample_subnet_for_flops(1.5, scores)


def test_grouped_conv_pruned_by_whole_groups():
    from mmrazor_ext.registry import MODELS, register_all_modules
    register_all_modules()
    model = randomise(MODELS.build(dict(type='mmpretrain.ResNeXt', depth=50,
                                        groups=32, width_per_group=4)))
    wrapped = nn.Sequential(model)
    x = torch.randn(1, 3, 64, 64)
    pruner = ChannelPruner(wrapped, x)
    inner = [s for s in pruner.channel_spaces.values()
             if s.name.endswith('layer1.0.conv1')][0]
    assert inner.num_channels == 32 and inner.unit_size == 4
    pruner.set_subnet(pruner.sample_subnet_uniform(0.5))
    small = pruner.export()
    conv2 = small[0].layer1[0].conv2
    assert conv2.groups == 16 and conv2.in_channels == 64
    assert conv2.weight.shape[1] == 4  # group width unchanged


def test_save_and_load_subnet_rebuilds_equal_model(tmp_path):
    torch.manual_seed(0)
    model = randomise(CifarResNet(20))
    x = torch.randn(1, 3, 32, 32)
    pruner = ChannelPruner(model, x)
    pruner.set_subnet(pruner.sample_subnet_diff(
        0.4, pruner.get_metric_local('l1')))
    small = pruner.export()
    with torch.no_grad():  # the pruned model is fine-tuned further
        for p in small.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = str(tmp_path / 'sub' / 'subnet.json')
    pruner.save_subnet(path, weights=False)
    torch.save(small.state_dict(), tmp_path / 'sub' / 'subnet.pth')
    data = json.load(open(path))
    data['weights'] = 'subnet.pth'
    json.dump(data, open(path, 'w'))
    assert set(data['spaces']) == set(pruner.channel_spaces)
    rebuilt = load_subnet(CifarResNet(20), path)
    small.eval()
    rebuilt.eval()
    xs = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(xs), small(xs))
    assert [p.shape for p in rebuilt.parameters()] == \
        [p.shape for p in small.parameters()]
    # save_subnet with weights writes both files atomically
    path2 = str(tmp_path / 'b.json')
    pruner.save_subnet(path2)
    assert (tmp_path / 'b.pth').exists()
    assert not list(tmp_path.glob('.tmp_*'))
    again = load_subnet(CifarResNet(20), path2).eval()
    ref = pruner.export().eval()
    with torch.no_grad():
        assert torch.allclose(again(xs), ref(xs))


def test_fuse_bn_export_and_registry():
    model = randomise(CifarResNet(20))
    x = torch.randn(1, 3, 32, 32)
    pruner = PRUNERS.build(dict(type='ChannelPruner', model=model,
                                example_inputs=x))
    assert isinstance(pruner, ChannelPruner)
    pruner.set_subnet(pruner.sample_subnet_uniform(0.25))
    fused = pruner.export(fuse_bn=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert pruner.last_export_report['ok']
    assert METRICS.get('l1') is not None


def test_metric_contents_override():
    model = CifarResNet(20)
    pruner = ChannelPruner(model, torch.randn(1, 3, 32, 32))
    name = 'backbone.layer1.0.conv1'
    w = torch.zeros_like(model.backbone.layer1[0].conv1.weight)
    w[3] = 1.0
    scores = pruner.get_metric_local('l1', contents={name: w})
    space = [s for s in pruner.channel_spaces.values() if s.name == name][0]
    assert int(scores[space.name].argmax()) == 3
    with pytest.raises(KeyError, match='nope'):
        pruner.get_metric_local('l1', contents={'nope': w})
    with pytest.raises(KeyError, match='no_such_metric'):
        pruner.get_metric_local('no_such_metric')


def test_flops_target_respects_divisor():
    model = CifarResNet(20)
    pruner = ChannelPruner(model, torch.randn(1, 3, 32, 32), divisor=4)
    sub = pruner.sample_subnet_for_flops(0.6, mode='uniform', verify=False)
    assert all(int(m.sum()) % 4 == 0 for m in sub.values())
    ratio = pruner.estimate_flops(sub) / pruner.original_flops
    assert abs(ratio / 0.6 - 1) <= 0.01
