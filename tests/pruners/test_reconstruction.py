"""Reconstruction after pruning (least squares / bias compensation)."""
import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmrazor_ext.models import CifarResNet
from mmrazor_ext.pruners import ChannelPruner
from mmrazor_ext.pruners.reconstruction import reconstruct
from mmrazor_ext.utils import recalibrate_bn


def _keep_all(pruner):
    return {n: torch.ones(s.num_channels, dtype=torch.bool)
            for n, s in pruner.channel_spaces.items()}


def _randomise_bn(model, gen):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + .5)
                m.bias.copy_(torch.rand(m.num_features, generator=gen) - .5)
                m.running_mean.copy_(torch.randn(m.num_features,
                                                 generator=gen))
                m.running_var.copy_(torch.rand(m.num_features,
                                               generator=gen) + .5)


class Chain(nn.Module):
    """conv0 -> [bn0] -> conv1 -> [bn1] -> relu -> conv2 -> pool -> fc, or
    conv0 -> flatten -> fc (``consumer='linear'``)."""

    def __init__(self, k=3, bn=False, bias=True, groups=1, consumer='conv',
                 dim=2, c1=None):
        super().__init__()
        conv = nn.Conv2d if dim == 2 else nn.Conv1d
        bnorm = nn.BatchNorm2d if dim == 2 else nn.BatchNorm1d
        self.consumer = consumer
        self.conv0 = conv(3, 8, 3, padding=1, bias=False)
        self.bn0 = bnorm(8) if bn else nn.Identity()
        self.conv1 = conv(8, 8, k, bias=bias,
                          **(c1 or dict(padding=k // 2)))
        self.bn1 = bnorm(8) if bn else nn.Identity()
        self.conv2 = conv(8, 8, 3, padding=1, bias=True, groups=groups)
        self.fc = nn.Linear(8 * 6 * (6 if dim == 2 else 1) if
                            consumer == 'linear' else 8, 5)

    def forward(self, x):
        x = self.bn0(self.conv0(x))
        if self.consumer == 'linear':
            return self.fc(torch.flatten(x, 1))
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.conv2(x)
        return self.fc(x.flatten(2).mean(-1))


def _chain(seed=0, dim=2, **kw):
    torch.manual_seed(seed)
    model = Chain(dim=dim, **kw).eval()
    _randomise_bn(model, torch.Generator().manual_seed(seed))
    shape = (1, 3, 6, 6) if dim == 2 else (1, 3, 6)
    return model, ChannelPruner(model, torch.randn(shape))


def _batches(n, shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn((16,) + shape, generator=g) for _ in range(n)]


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


# -- (a) exact recovery -------------------------------------------------------
@pytest.mark.parametrize('kw', [
    dict(k=1), dict(k=3), dict(k=3, dim=1), dict(k=1, bn=True, bias=False),
    dict(consumer='linear'), dict(k=3, c1=dict(stride=2)),
    dict(k=3, c1=dict(dilation=2, padding=2, padding_mode='reflect')),
    dict(k=2, c1=dict(padding='same', padding_mode='circular')),
    dict(k=3, dim=1, c1=dict(padding='same', padding_mode='replicate'))],
    ids=['1x1', '3x3', 'conv1d', 'bn_eval', 'linear', 'stride2',
         'dilated_reflect', 'even_same_circular', 'conv1d_same_replicate'])
def test_least_squares_restores_linearly_dependent_channels(kw):
    model, pruner = _chain(**kw)
    with torch.no_grad():  # filters 4..7 = combinations of filters 0..3
        mix = torch.randn(4, 4, generator=torch.Generator().manual_seed(1))
        w = model.conv0.weight
        w[4:] = torch.einsum('ij,j...->i...', mix, w[:4])
    dense = copy.deepcopy(model)
    sub = _keep_all(pruner)
    sub['conv0'][4:] = False
    pruner.set_subnet(sub)
    shape = (3, 6, 6) if kw.get('dim', 2) == 2 else (3, 6)
    batches = _batches(12, shape)  # > 144 points: fc's unknowns
    x = _batches(1, shape, seed=5)[0]
    with torch.no_grad():
        assert _rel(model(x), dense(x)) > 1e-2
    report = reconstruct(pruner, batches, bn_recalib=False)
    consumer = 'fc' if kw.get('consumer') == 'linear' else 'conv1'
    assert list(report['layers']) == [consumer]
    rep = report['layers'][consumer]
    assert rep['rel_error_after'] < 1e-6 < rep['rel_error_before']
    assert rep['offset_to'] == ('bn' if kw.get('bn') else 'bias')
    with torch.no_grad():
        assert _rel(model(x), dense(x)) < 1e-4  # held-out input too


# -- bias compensation --------------------------------------------------------
@pytest.mark.parametrize('bn,bias,target', [(False, True, 'bias'),
                                            (True, False, 'bn'),
                                            (False, False, 'new_bias')])
def test_bias_compensation_restores_constant_channels(bn, bias, target):
    model, _ = _chain(k=1, bn=bn, bias=bias)
    model.conv0.bias = nn.Parameter(torch.randn(8))
    with torch.no_grad():
        model.conv0.weight[4:] = 0  # channels 4..7 are constant
    if bn:  # keep bn0 an identity map on the constant channels' values
        model.bn0 = nn.Identity()
    pruner = ChannelPruner(model, torch.randn(1, 3, 6, 6))
    dense = copy.deepcopy(model)
    sub = _keep_all(pruner)
    sub['conv0'][4:] = False
    pruner.set_subnet(sub)
    report = reconstruct(pruner, _batches(2, (3, 6, 6)),
                         method='bias_compensation', bn_recalib=False)
    assert report['layers']['conv1']['offset_to'] == target
    assert report['layers']['conv1']['offset_norm'] > 0
    x = _batches(1, (3, 6, 6), seed=3)[0]
    with torch.no_grad():
        assert _rel(model(x), dense(x)) < 1e-5
    assert torch.equal(model.conv1.weight, dense.conv1.weight)


# -- (c) sequential order -----------------------------------------------------
def _manual_solve(conv, x, y, keep_in, keep_out, ridge):
    """Per-group ridge least squares with intercept, all positions."""
    g, ig = conv.groups, conv.in_channels // conv.groups
    og = conv.out_channels // g
    cols = F.unfold(x, conv.kernel_size, padding=conv.padding)
    kk = cols.shape[1] // conv.in_channels
    cols = cols.reshape(x.shape[0], conv.in_channels, kk, -1)
    y = y.flatten(2)
    res = {}
    for j in range(g):
        rows = keep_out[j * og:(j + 1) * og].nonzero().reshape(-1) + j * og
        chans = keep_in[j * ig:(j + 1) * ig].nonzero().reshape(-1) + j * ig
        if not rows.numel():
            continue
        xs = cols[:, chans].permute(0, 3, 1, 2).reshape(-1, chans.numel() * kk)
        ys = y[:, rows].permute(0, 2, 1).reshape(-1, rows.numel())
        xs, ys = xs.double(), ys.double()
        xc, yc = xs - xs.mean(0), ys - ys.mean(0)
        gram = xc.T @ xc
        lam = ridge * torch.trace(gram) / gram.shape[0]
        w = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0]),
                               xc.T @ yc)
        res[j] = (rows, chans - j * ig, w.T.reshape(rows.numel(),
                                                    chans.numel(), -1))
    return res


def _capture(module, model, x):
    seen = {}
    hook = module.register_forward_hook(
        lambda m, a, o: seen.update(x=a[0].detach(), y=o.detach()))
    with torch.no_grad():
        model(x)
    hook.remove()
    return seen


@pytest.mark.parametrize('groups', [1, 2])
def test_sequential_fit_uses_refitted_upstream_outputs(groups):
    model, pruner = _chain(k=3, groups=groups)
    dense = copy.deepcopy(model)
    sub = _keep_all(pruner)
    sub['conv0'][[1, 4, 6]] = False     # consumer 1: conv1
    if groups == 1:                     # consumer 2: conv2
        sub['conv1'][[0, 2, 4, 5, 6, 7]] = False
    else:  # units are conv2's groups (in and out tied); drop the second
        assert sub['conv1'].numel() == 2
        sub['conv1'][1] = False
    pruner.set_subnet(sub)
    batches = _batches(3, (3, 6, 6))
    x = torch.cat(batches)
    target = _capture(dense.conv2, dense, x)['x']
    y_dense = F.conv2d(target, dense.conv2.weight, None, padding=1,
                       groups=groups)
    unrefitted = _capture(model.conv2, model, x)['x']
    report = reconstruct(pruner, batches, points_per_image=None,
                         bn_recalib=False, ridge=1e-5)
    assert list(report['layers'])[:2] == ['conv1', 'conv2']
    refitted = _capture(model.conv2, model, x)['x']
    assert not torch.allclose(refitted, unrefitted, atol=1e-3)
    g = pruner.graph
    gmask = g.global_mask(pruner.subnet)
    keep_in = g.layer_keep(g.layers['conv2'], gmask, 'in')
    keep_out = g.layer_keep(g.layers['conv2'], gmask, 'out')
    want = _manual_solve(model.conv2, refitted, y_dense, keep_in, keep_out,
                         1e-5)
    stale = _manual_solve(model.conv2, unrefitted, y_dense, keep_in,
                          keep_out, 1e-5)
    assert len(want) == 1  # groups=2: the second group is pruned
    for j, (rows, chans, w) in want.items():
        got = model.conv2.weight[rows][:, chans].flatten(2).double()
        assert torch.allclose(got, w, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(got, stale[j][2], rtol=1e-2, atol=1e-3)


def test_recompute_mode_matches_cached_mode():
    results = []
    for cache in (2048, 0):
        model, pruner = _chain(k=3, groups=2)
        sub = _keep_all(pruner)
        sub['conv0'][[1, 4]] = False
        sub['conv1'][1] = False  # the second group of conv2
        pruner.set_subnet(sub)
        rep = reconstruct(pruner, _batches(3, (3, 6, 6)), max_cache_mb=cache,
                          points_per_image=7)
        assert rep['cached'] is (cache > 0)
        results.append(model.state_dict())
    for k, v in results[0].items():
        assert torch.allclose(v, results[1][k], rtol=1e-6, atol=1e-7), k


# -- (d) errors ---------------------------------------------------------------
def test_errors_name_the_field():
    model, pruner = _chain()
    batches = _batches(1, (3, 6, 6))
    with pytest.raises(ValueError, match='set_subnet'):
        reconstruct(pruner, batches)
    sub = _keep_all(pruner)
    sub['conv0'][4:] = False
    pruner.set_subnet(sub)
    cases = [(dict(num_batches=0), 'num_batches'),
             (dict(num_batches=True), 'num_batches'),
             (dict(ridge=-1e-3), 'ridge'),
             (dict(ridge=float('nan')), 'ridge'),
             (dict(method='ridge_regression'), 'method'),
             (dict(points_per_image=0), 'points_per_image'),
             (dict(layers=['nope']), 'layers')]
    for kw, field in cases:
        with pytest.raises(ValueError, match=field):
            reconstruct(pruner, batches, **kw)
    with pytest.raises(ValueError, match='batches'):
        reconstruct(pruner, [])
    with pytest.raises(ValueError, match='batches'):
        reconstruct(pruner, iter(()))
    with pytest.raises(TypeError, match='batches'):
        reconstruct(pruner, ['not a tensor'])
    # a consumer left with no input channel (set_subnet itself refuses it)
    pruner.subnet['conv0'] = torch.zeros(8, dtype=torch.bool)
    with pytest.raises(ValueError, match="'conv1'.*no kept input"):
        reconstruct(pruner, batches)


def test_batch_formats_and_num_batches():
    reports = []
    for fmt in ('tensor', 'pair', 'list'):
        model, pruner = _chain()
        sub = _keep_all(pruner)
        sub['conv0'][4:] = False
        pruner.set_subnet(sub)
        xs = _batches(5, (3, 6, 6))
        batches = {'tensor': xs, 'pair': [(x, 0) for x in xs],
                   'list': [[x, 0] for x in xs]}[fmt]
        rep = reconstruct(pruner, iter(batches), num_batches=3)
        assert rep['num_batches'] == 3
        reports.append(model.conv1.weight.detach().clone())
    assert torch.equal(reports[0], reports[1])
    assert torch.equal(reports[0], reports[2])


# -- (b) ResNet-20: errors and loss -------------------------------------------
def _band_data(n, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = torch.rand(n, 1, 28, 28, generator=g) * .3
    for i in range(n):
        x[i, 0, 2 * y[i]:2 * y[i] + 4] = 1.0
    return x, y


@pytest.fixture(scope='module')
def trained_resnet20():
    torch.manual_seed(0)
    model = CifarResNet(20, in_channels=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for step in range(24):
        x, y = _band_data(32, step)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    recalibrate_bn(model, [_band_data(32, 50 + i) for i in range(4)])
    return model.eval()


def _outputs(model, names, x):
    seen, hooks = {}, []
    for name in names:
        hooks.append(model.get_submodule(name).register_forward_hook(
            lambda m, a, o, name=name: seen.__setitem__(name, o.detach())))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


def _consumer_errors(model, dense, names, batches):
    """Squared error of each layer's kept outputs against the dense model."""
    errs = dict.fromkeys(names, 0.0)
    for x, _ in batches:
        out_m, out_d = _outputs(model, names, x), _outputs(dense, names, x)
        for name in names:
            keep = out_m[name].transpose(0, 1).flatten(1).abs().sum(1) > 0
            diff = (out_m[name] - out_d[name])[:, keep]
            errs[name] += float((diff ** 2).sum())
    return errs


def _loss(model, batches):
    with torch.no_grad():
        return sum(float(F.cross_entropy(model(x), y)) for x, y in batches)


def test_resnet20_errors_and_loss_go_down(trained_resnet20):
    model = copy.deepcopy(trained_resnet20)
    dense = copy.deepcopy(model)
    pruner = ChannelPruner(model, torch.randn(1, 1, 28, 28))
    pruner.set_subnet(pruner.sample_subnet_uniform(
        0.5, pruner.get_metric_local('l1')))
    batches = [_band_data(32, 100 + i) for i in range(3)]
    pruned_state = copy.deepcopy(model.state_dict())
    report = reconstruct(pruner, batches, bn_recalib=False)
    names = list(report['layers'])
    # every conv but the stem (18 in blocks, 2 downsample) and the fc
    assert len(names) == 21 and 'fc' in names and not report['skipped']
    assert report['cached'] is True
    assert all(r['rel_error_after'] < r['rel_error_before']
               for r in report['layers'].values())
    after = _consumer_errors(model, dense, names, batches)
    loss_after = _loss(model, batches)
    recalibrate_bn(model, batches)
    loss_after_bn = _loss(model, batches)
    model.load_state_dict(pruned_state)
    before = _consumer_errors(model, dense, names, batches)
    loss_before = _loss(model, batches)
    recalibrate_bn(model, batches)
    loss_before_bn = _loss(model, batches)
    for name in names:
        assert after[name] < before[name], (name, after[name], before[name])
    assert loss_after <= loss_before
    assert loss_after_bn <= loss_before_bn


# -- (e) export and (f) state_dict --------------------------------------------
def test_export_and_state_dict_carry_refitted_weights(trained_resnet20):
    model = copy.deepcopy(trained_resnet20)
    original = copy.deepcopy(model.state_dict())
    pruner = ChannelPruner(model, torch.randn(1, 1, 28, 28))
    subnet = pruner.sample_subnet_uniform(0.4)
    pruner.set_subnet(subnet)
    batches = [_band_data(16, 200 + i) for i in range(2)]
    rep = reconstruct(pruner, batches, points_per_image=8)
    assert rep['bn_recalibrated'] == 2
    assert not torch.equal(model.backbone.layer1[0].conv2.weight,
                           original['backbone.layer1.0.conv2.weight'])
    x = batches[0][0]
    small = pruner.export()  # checks masked == exported itself
    with torch.no_grad():
        ref = model(x)
        assert _rel(small(x), ref) < 1e-5
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    fresh = CifarResNet(20, in_channels=1).eval()
    pruner2 = ChannelPruner(fresh, torch.randn(1, 1, 28, 28))
    pruner2.set_subnet(subnet)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    with torch.no_grad():
        assert _rel(fresh(x), ref) < 1e-6


def test_mmengine_classifier_with_data_dicts():
    from mmpretrain.models import ImageClassifier
    from mmpretrain.structures import DataSample
    torch.manual_seed(0)
    model = ImageClassifier(
        backbone=dict(type='mmrazor_ext.ResNet_CIFAR', depth=20,
                      in_channels=1),
        neck=dict(type='mmpretrain.GlobalAveragePooling'),
        head=dict(type='mmpretrain.LinearClsHead', num_classes=10,
                  in_channels=64,
                  loss=dict(type='mmpretrain.CrossEntropyLoss')),
        data_preprocessor=dict(type='mmpretrain.ClsDataPreprocessor',
                               mean=[128.], std=[64.])).eval()
    pruner = ChannelPruner(model, torch.randn(1, 1, 28, 28))
    pruner.set_subnet(pruner.sample_subnet_uniform(0.5))
    g = torch.Generator().manual_seed(0)
    batches = [dict(inputs=[torch.randint(0, 255, (1, 28, 28), generator=g,
                                          dtype=torch.uint8)
                            for _ in range(4)],
                    data_samples=[DataSample().set_gt_label(1)
                                  for _ in range(4)]) for _ in range(2)]
    report = reconstruct(pruner, batches)
    assert len(report['layers']) == 21 and report['bn_recalibrated'] == 2
    assert all(r['rel_error_after'] < r['rel_error_before']
               for r in report['layers'].values())
    pruner.export()  # raises if the exported model differs


# -- (g) the solve shared with AMC; a searched subnet against its supernet ----
def test_solve_consumer_recovers_dependent_channels():
    from mmrazor_ext.pruners import LeastSquaresStats, solve_consumer
    g = torch.Generator().manual_seed(0)
    base = torch.randn(500, 3, 4, generator=g)
    # channel 3 = channel 0 + channel 1: removable without loss
    x = torch.cat([base, base[:, :1] + base[:, 1:2]], 1)
    w = torch.randn(5, 4, 4, generator=g)
    keep = torch.tensor([True, True, True, False])
    new, rep = solve_consumer(x, w, keep, ridge=0)
    y = torch.einsum('pck,ock->po', x, w)
    y_new = torch.einsum('pck,ock->po', x[:, keep], new[:, keep])
    assert _rel(y_new, y) < 1e-4
    assert rep['rel_error_after'] < 1e-8 < rep['rel_error_before']
    assert torch.equal(new[:, 3], w[:, 3])   # removed columns untouched
    assert solve_consumer(x, w, torch.ones(4, dtype=torch.bool))[0] is not w
    with pytest.raises(ValueError, match='no kept input'):
        solve_consumer(x, w, torch.zeros(4, dtype=torch.bool))
    with pytest.raises(ValueError, match='expected x'):
        solve_consumer(x[:, :2], w, keep)
    with pytest.raises(ValueError, match='ridge'):
        solve_consumer(x, w, keep, ridge=-1)
    with pytest.raises(ValueError, match='no rows'):
        LeastSquaresStats().solve()


def test_reference_model_is_the_target():
    model, pruner = _chain(bn=True, bias=False)
    batches = _batches(2, (3, 6, 6))
    subnet = _keep_all(pruner)
    subnet['conv0'][:4] = False
    pruner.set_subnet(subnet)
    with pytest.raises(ValueError, match='reference'):
        reconstruct(pruner, batches, reference=model)
    with pytest.raises(ValueError, match='reference'):
        reconstruct(pruner, batches, reference=nn.Linear(2, 2))
    ref = copy.deepcopy(model)  # masked: the target is the masked model
    before = copy.deepcopy(model.state_dict())
    rep = reconstruct(pruner, batches, reference=ref, bn_recalib=False)
    # the masked model already reproduces itself: nothing to improve
    for r in rep['layers'].values():
        assert r['rel_error_before'] < 1e-10
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], atol=1e-4, rtol=1e-4)


def test_subnet_model_reconstructs_against_the_dense_model(tmp_path):
    from mmengine.config import Config
    from mmpretrain.structures import DataSample

    from mmrazor_ext.algorithms import SubnetModel
    from mmrazor_ext.engine.hooks.pruning_hook import SubnetReconstructHook
    from mmrazor_ext.registry import MODELS, register_all_modules
    from mmrazor_ext.utils import evaluate_top1
    register_all_modules()
    cfg = Config.fromfile('configs/baselines/resnet20_1xb128_fashionmnist.py')
    torch.manual_seed(0)
    dense = MODELS.build(cfg.model).eval()
    torch.save({'state_dict': dense.state_dict()}, tmp_path / 'dense.pth')
    pruner = ChannelPruner(dense, torch.randn(1, 1, 28, 28))
    pruner.set_subnet(pruner.sample_subnet_uniform(
        0.5, pruner.get_metric_local('l1')))
    pruner.save_subnet(str(tmp_path / 'subnet.json'), weights=False)
    pruner.clear_subnet()
    g = torch.Generator().manual_seed(0)
    batches = [dict(inputs=[torch.randint(0, 255, (1, 28, 28), generator=g,
                                          dtype=torch.uint8)
                            for _ in range(8)],
                    data_samples=[DataSample().set_gt_label(1)
                                  for _ in range(8)]) for _ in range(2)]

    def build(**kw):
        return SubnetModel(cfg.model, str(tmp_path / 'subnet.json'),
                           data_preprocessor=cfg.data_preprocessor, **kw)
    with pytest.raises(ValueError, match='reconstruct'):
        build(reconstruct=dict(num_batches=2))  # no dense weights
    with pytest.raises(ValueError, match='reconstruct'):
        build(init_checkpoint=str(tmp_path / 'dense.pth'), from_scratch=True,
              reconstruct=dict(num_batches=2))
    sliced = build(init_checkpoint=str(tmp_path / 'dense.pth'))
    assert not getattr(sliced, 'reconstruction_pending', False)
    model = build(init_checkpoint=str(tmp_path / 'dense.pth'),
                  reconstruct=dict(num_batches=2, points_per_image=8,
                                   bn_recalib=False))
    params = [id(p) for p in model.parameters()]
    # a resumed run keeps the checkpoint's weights
    runner = type('R', (), dict(model=model, iter=3, train_dataloader=batches,
                                val_dataloader=batches))()
    hook = SubnetReconstructHook(eval_batches=0)
    hook.before_train(runner)
    assert model.reconstruction_pending
    runner.iter = 0
    hook.before_train(runner)
    assert not model.reconstruction_pending
    assert [id(p) for p in model.parameters()] == params  # optimizer's ones

    def err(m):
        x = model.data_preprocessor(batches[0], False)['inputs']
        with torch.no_grad():
            return _rel(m.architecture.eval()(x, mode='tensor'),
                        dense(x, mode='tensor'))
    assert err(model) < err(sliced)
    assert 0 <= evaluate_top1(model, batches) <= 100
