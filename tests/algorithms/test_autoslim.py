"""AutoSlim: sandwich-rule training, greedy slimming, resume, script."""
import copy
import json
import os

import pytest
import torch
from mmengine.optim import OptimWrapper

from helpers import ROOT, run_tool

SCRIPT = os.path.join(ROOT, 'scripts/autoslim/run_autoslim_fashionmnist_resnet20.sh')
TRAIN_CFG = os.path.join(ROOT,
                         'configs/autoslim/autoslim_resnet20_1xb128_fashionmnist.py')
SHAPE = (1, 1, 12, 12)  # small images keep the CPU tests fast


def _batches(n, size=8, seed=0):
    """Learnable synthetic batches: the class is a bright row band."""
    gen = torch.Generator().manual_seed(seed)
    res = []
    for _ in range(n):
        y = torch.randint(0, 10, (size,), generator=gen)
        x = 0.3 * torch.randn(size, *SHAPE[1:], generator=gen)
        for i, c in enumerate(y.tolist()):
            x[i, :, c % 12, :] += 3.0
        res.append((x, y))
    return res


def _algo(**kwargs):
    from mmrazor_ext.algorithms import AutoSlim
    from mmrazor_ext.models import CifarResNet
    torch.manual_seed(0)
    return AutoSlim(CifarResNet(20, 10, 1), input_shape=SHAPE, **kwargs)


def _sgd(algo, lr=0.1):
    return OptimWrapper(torch.optim.SGD(algo.parameters(), lr=lr,
                                        momentum=0.9))


def test_sandwich_step_updates_shared_weights():
    algo = _algo(min_keep_ratio=0.35, num_random=2)
    pruner = algo.pruner
    small, spaces = algo.sandwich.min_subnet, pruner.channel_spaces
    # the smallest width keeps the first 35 % of every space
    for name, mask in small.items():
        n = spaces[name].num_channels
        assert 0 < int(mask.sum()) < n
        assert bool(mask[:int(mask.sum())].all())
    widths = algo.sandwich.widths(0)
    assert [w[0] for w in widths] == ['max', 'min', 'rand0', 'rand1']
    kept = [sum(int(m.sum()) for m in w[1].values()) for w in widths[1:]]
    total = sum(s.num_channels for s in spaces.values())
    assert kept[0] < min(kept[1:]) and max(kept[1:]) < total

    x, y = _batches(1, 16)[0]
    bn = algo.architecture.model.backbone.layer3[2].bn2
    before = {k: v.detach().clone() for k, v in algo.named_parameters()}
    # expected BN running stats: one dense train-mode forward (only the
    # largest width updates them)
    dense = copy.deepcopy(algo.architecture.model).train()
    with torch.no_grad():
        dense(x)
    algo.train()
    optim = _sgd(algo)
    log = algo.train_step((x, y), optim)
    assert list(log) == ['loss', 'loss_max', 'loss_min', 'loss_rand0',
                         'loss_rand1']
    assert all(torch.isfinite(v) for v in log.values())
    assert float(log['loss_max']) > 1.0          # ground truth on 10 classes
    assert abs(float(log['loss']) - sum(float(log[k]) for k in log
                                        if k != 'loss')) < 1e-5
    ref = dense.backbone.layer3[2].bn2
    torch.testing.assert_close(bn.running_mean, ref.running_mean)
    torch.testing.assert_close(bn.running_var, ref.running_var)
    # Each block's last BN starts at zero (zero-init), so its branch gets
    # gradients from the second step on: after two, every weight moved.
    algo.train_step((x, y), optim)
    changed = [k for k, v in algo.named_parameters()
               if not torch.equal(v, before[k])]
    assert len(changed) == len(before)
    # channels outside every narrow width learn too (from the largest)
    w = algo.architecture.model.backbone.layer3[0].conv1.weight
    assert not torch.equal(w[-1], before['architecture.model.backbone.'
                                         'layer3.0.conv1.weight'][-1])
    # masks are cleared after the step: the model is dense again
    assert pruner.subnet is None
    assert not any(h for m in algo.modules() for h in m._forward_hooks.values()
                   if getattr(h, '_mmrazor_ext_mask_hook', False))


def test_distillation_uses_largest_logits(monkeypatch):
    algo = _algo(min_keep_ratio=0.5, num_random=2, temperature=2.0)
    outputs = []
    algo.architecture.model.fc.register_forward_hook(
        lambda m, a, out: outputs.append(out.detach().clone()))
    calls = []
    original = algo.sandwich.distill_loss

    def spy(student, teacher):
        loss = original(student, teacher)
        calls.append((student.detach().clone(), teacher, loss.detach()))
        return loss
    monkeypatch.setattr(algo.sandwich, 'distill_loss', spy)
    x, y = _batches(1, 16)[0]
    algo.train()
    log = algo.train_step((x, y), _sgd(algo))
    assert len(outputs) == 4 and len(calls) == 3
    for i, (student, teacher, loss) in enumerate(calls):
        assert not teacher.requires_grad
        assert torch.equal(teacher, outputs[0])        # the largest's logits
        assert torch.equal(student, outputs[i + 1])
        assert not torch.equal(student, teacher)
        assert torch.isfinite(loss) and float(loss) >= 0
        # KL at T=2, scaled by T^2
        t = 2.0
        p = torch.softmax(teacher / t, -1)
        ref = (p * (p.log() - torch.log_softmax(student / t, -1))).sum(-1)
        torch.testing.assert_close(loss, ref.mean() * t * t, rtol=1e-4,
                                   atol=1e-6)
    torch.testing.assert_close(
        log['loss_max'], torch.nn.functional.cross_entropy(outputs[0], y))


@pytest.mark.parametrize('name', ['mobilenet_v2', 'resnet18'])
def test_torchvision_sandwich_step(name):
    """Models whose graphs crash MMRazor's tracer (trace_norm_conv_links)."""
    import torchvision

    from mmrazor_ext.algorithms import AutoSlim
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=10)
    algo = AutoSlim(model, input_shape=(1, 3, 32, 32), min_keep_ratio=0.5)
    assert len(algo.pruner.channel_spaces) > 5
    before = {k: v.detach().clone() for k, v in algo.named_parameters()}
    algo.train()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    log = algo.train_step((x, y), _sgd(algo, lr=0.01))
    assert len([k for k in log if k.startswith('loss_')]) == 4
    assert all(torch.isfinite(v) for v in log.values())
    changed = sum(not torch.equal(v, before[k])
                  for k, v in algo.named_parameters())
    assert changed > 0.9 * len(before)
    assert algo.pruner.subnet is None


@pytest.fixture(scope='module')
def slimmable():
    """A ResNet-20 trained a little with sandwich_train, its evaluator."""
    from mmrazor_ext.algorithms import sandwich_train
    from mmrazor_ext.models import CifarResNet
    from mmrazor_ext.pruners import ChannelPruner
    from mmrazor_ext.search import AdaptiveBNEvaluator
    torch.manual_seed(0)
    model = CifarResNet(20, 10, 1)
    data = _batches(6, 16)
    # the benchmark's way: one pruner for training widths and the search
    pruner = ChannelPruner(model, torch.randn(*SHAPE))
    out = sandwich_train(pruner, data[:4], epochs=2, min_keep_ratio=0.3,
                         lr=0.05,
                         log_interval=0)
    assert out['pruner'] is pruner
    assert len(out['history']) == 8
    assert out['history'][-1]['loss_max'] < out['history'][0]['loss_max']
    val = [(torch.cat([data[4][0], data[5][0]]),
            torch.cat([data[4][1], data[5][1]]))]
    ev = AdaptiveBNEvaluator(pruner, data[:1], val, bn_batches=1)
    return model, pruner, ev


def _slim(slimmable, work_dir, **kwargs):
    from mmrazor_ext.search import greedy_slim
    _, pruner, ev = slimmable
    return greedy_slim(pruner, ev, [0.5, 0.35], step=0.34,
                       min_keep_ratio=0.3, work_dir=str(work_dir), **kwargs)


@pytest.fixture(scope='module')
def straight(slimmable, tmp_path_factory):
    wd = tmp_path_factory.mktemp('straight')
    return wd, _slim(slimmable, wd)


def test_greedy_search_hits_flops_targets(slimmable, straight):
    from mmrazor_ext.estimators import get_model_complexity
    from mmrazor_ext.models import CifarResNet
    from mmrazor_ext.pruners import load_subnet
    model, pruner, _ = slimmable
    wd, results = straight
    assert [r['target'] for r in results] == [0.5, 0.35]
    dense = get_model_complexity(model, (torch.randn(*SHAPE),))['flops']
    for r in results:
        t = r['target']
        assert 0.98 * t <= r['flops_ratio'] <= t, r['flops_ratio']
        assert 0 <= r['top1'] <= 100
        # the JSON rebuilds a model with exactly the claimed FLOPs
        small = load_subnet(CifarResNet(20, 10, 1), str(wd / r['subnet_path']),
                            load_weights=False)
        flops = get_model_complexity(small, (torch.randn(*SHAPE),))['flops']
        assert flops == r['flops']
        assert abs(flops / dense - r['flops_ratio']) < 1e-9
        # front channels only (the slimmable convention)
        for name, mask in r['subnet'].items():
            k = int(mask.sum())
            assert bool(mask[:k].all()) and k == r['kept'][name]
    data = json.loads((wd / 'autoslim_search.json').read_text())
    assert data['done'] and (wd / 'autoslim_search.png').stat().st_size > 0
    traj = data['trajectory']
    greedy = [e for e in traj if e['kind'] == 'greedy']
    assert len(greedy) >= 3
    ratios = [e['flops_ratio'] for e in greedy]
    assert ratios == sorted(ratios, reverse=True)
    # each greedy step took the best-scoring candidate
    for e in greedy:
        assert e['top1'] == max(e['candidates'].values())
    assert pruner.subnet is None  # the search leaves the model dense


def test_greedy_search_resumes_after_kill(slimmable, straight, tmp_path):
    wd, ref = straight
    part = _slim(slimmable, tmp_path, max_steps=2)
    data = json.loads((tmp_path / 'autoslim_search.json').read_text())
    assert not data['done'] and data['trajectory'][-1]['iter'] == 2
    assert len(part) < 2
    n_before = data['num_evaluations']
    res = _slim(slimmable, tmp_path)
    data = json.loads((tmp_path / 'autoslim_search.json').read_text())
    full = json.loads((wd / 'autoslim_search.json').read_text())
    assert data['done']
    assert data['trajectory'] == full['trajectory']
    assert data['num_evaluations'] == full['num_evaluations'] > n_before
    for a, b in zip(res, ref):
        assert a['kept'] == b['kept'] and a['top1'] == b['top1']
    # a finished search is not redone; a different one is refused
    assert _slim(slimmable, tmp_path)[0]['kept'] == ref[0]['kept']
    from mmrazor_ext.search import greedy_slim
    with pytest.raises(ValueError, match='step'):
        greedy_slim(slimmable[1], slimmable[2], [0.5, 0.35], step=0.1,
                    min_keep_ratio=0.3, work_dir=str(tmp_path))


def test_bad_arguments():
    from mmrazor_ext.search import greedy_slim
    algo = _algo()
    with pytest.raises(ValueError, match='min_keep_ratio'):
        _algo(min_keep_ratio=0)
    with pytest.raises(ValueError, match='target_flops_ratios'):
        greedy_slim(algo.pruner, None, [1.5])
    with pytest.raises(ValueError, match='step'):
        greedy_slim(algo.pruner, None, [0.5], step=0)
    # unreachable with every space at 35 %: ~0.35^2 of the FLOPs
    with pytest.raises(ValueError, match='below'):
        greedy_slim(algo.pruner, None, [0.05], min_keep_ratio=0.35)


def test_deprecated_min_ratio_keyword(tmp_path):
    """The old name of ``min_keep_ratio`` still works, with a warning."""
    from mmrazor_ext.search import GreedySlimmer
    with pytest.warns(DeprecationWarning, match='min_keep_ratio'):
        algo = _algo(min_ratio=0.5)
    assert algo.min_keep_ratio == algo.sandwich.min_keep_ratio == 0.5
    assert _algo().min_keep_ratio == 0.35           # the default
    with pytest.raises(ValueError, match='disagree'):
        _algo(min_keep_ratio=0.4, min_ratio=0.5)
    with pytest.warns(DeprecationWarning, match='min_ratio'):
        slimmer = GreedySlimmer(algo.pruner, None, [0.5], min_ratio=0.5)
    assert slimmer.min_keep_ratio == 0.5


def test_script_quick_mode_and_resume(tmp_path, tiny_fmnist):
    wd = tmp_path / 'autoslim'
    env = {'DATA_ROOT': tiny_fmnist, 'WORK_DIR': str(wd)}
    proc = run_tool(['bash', SCRIPT, 'quick'], env=env)
    log = proc.stdout + proc.stderr
    assert 'loss_rand1' in log
    search = wd / 'search'
    data = json.loads((search / 'autoslim_search.json').read_text())
    assert data['done']
    for t, tag in ((0.5, '0.50'), (0.35, '0.35')):
        entry = data['targets'][repr(t)]
        assert 0.98 * t <= entry['flops_ratio'] <= t
        assert (search / f'subnet_flops{tag}.json').is_file()
        assert (search / f'subnet_flops{tag}.pth').is_file()
    assert (search / 'autoslim_search.png').is_file()
    # The slimmable checkpoint resumes (weights only, no extra state); in
    # process to spare a third interpreter start.
    from tools.train import main as train_main
    first = (wd / 'epoch_1.pth').stat().st_mtime_ns
    train_main([
        TRAIN_CFG, '--work-dir', str(wd), '--resume', '--cfg-options',
        f'train_dataloader.dataset.data_root={tiny_fmnist}',
        f'val_dataloader.dataset.data_root={tiny_fmnist}',
        'train_dataloader.batch_size=16', 'train_dataloader.num_workers=0',
        'train_dataloader.persistent_workers=False',
        'val_dataloader.num_workers=0', 'val_dataloader.persistent_workers=False',
        'train_cfg.max_epochs=2', 'param_scheduler.end=2',
        'param_scheduler.pct_start=0.5'])
    from mmrazor_ext.engine import safe_load
    ckpt = safe_load(str(wd / 'epoch_2.pth'))
    assert ckpt['meta']['iter'] == 8 and ckpt['meta']['epoch'] == 2
    assert (wd / 'epoch_1.pth').stat().st_mtime_ns == first  # not redone
    assert all(torch.isfinite(v).all() for v in ckpt['state_dict'].values()
               if v.is_floating_point())
