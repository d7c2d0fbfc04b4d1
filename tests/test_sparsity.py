"""Unit tests of mmrazor_ext.sparsity: config validation, mask math, fake
sparse modules, layer discovery and every scheduler on small CNNs."""
import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mmrazor_ext.models import CifarResNet
from mmrazor_ext.sparsity import (
    SparsityConfigError,
    block_aligned,
    block_mask,
    build_sparse_scheduler,
    dense_weight,
    magnitude_mask,
    nm_compliant,
    nm_mask,
    strip_fake_sparse,
)
from mmrazor_ext.sparsity.mask_generators import kept_magnitude_nm, project_to_budget


def resnet20():
    torch.manual_seed(0)
    return CifarResNet(20, num_classes=10, in_channels=1)


class WideNet(nn.Module):
    """Channels large enough for 32x64 tiles and 2:4 on every conv."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 128, 3, padding=1, stride=2)
        self.bn2 = nn.BatchNorm2d(128)
        self.conv3 = nn.Conv2d(128, 128, 1)
        self.big = nn.Conv2d(128, 128, 9, padding=4)  # kernel > 8
        self.fc = nn.Linear(128, 64)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.big(self.conv3(x))
        return self.fc(x.mean((2, 3)))


def batches(n, shape=(8, 1, 28, 28), classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(*shape, generator=g),
             torch.randint(0, classes, (shape[0],), generator=g))
            for _ in range(n)]


def amba_cfg(**kw):
    kwargs = dict(total_iters=9, sparsity_table=[30, 50, 70],
                  no_prune_keyword='', no_prune_layer='', prun_algo=1,
                  do_sparse_analysis=False, default_input_shape=[1, 1, 28, 28],
                  output_dir=None, save_dir=None)
    kwargs.update(kw)
    return dict(mask_generator=dict(type='NormalMaskGenerator'),
                fake_sparse=dict(type='FakeSparse'),
                scheduler=dict(type='AmbaLevelPruneScheduler', kwargs=kwargs))


# --- config validation -------------------------------------------------------
def kw(cfg):
    return cfg['scheduler']['kwargs']


@pytest.mark.parametrize('mutate, key', [
    (lambda c: c.update(bogus=1), 'bogus'),
    (lambda c: kw(c).update(sparsity_tabel=[1]), 'sparsity_tabel'),
    (lambda c: kw(c).update(total_iters='ten'), 'total_iters'),
    (lambda c: kw(c).update(total_iters=True), 'total_iters'),
    (lambda c: kw(c).update(sparsity_table=[50, 30]), 'sparsity_table'),
    (lambda c: kw(c).update(sparsity_table=[30, 100]), 'sparsity_table'),
    (lambda c: kw(c).update(sparsity_table=[-1, 30]), 'sparsity_table'),
    (lambda c: kw(c).update(sparsity_table='30'), 'sparsity_table'),
    (lambda c: kw(c).update(prun_algo=2), 'prun_algo'),
    (lambda c: kw(c).update(do_sparse_analysis=1), 'do_sparse_analysis'),
    (lambda c: kw(c).update(default_input_shape=[1, 0]),
     'default_input_shape'),
    (lambda c: kw(c).update(no_prune_layer=3), 'no_prune_layer'),
    (lambda c: kw(c).pop('sparsity_table'), 'sparsity_table'),
    (lambda c: c['scheduler'].update(type='NoSuchScheduler'), 'scheduler.type'),
    (lambda c: c['scheduler'].update(kwarg={}), 'kwarg'),
    (lambda c: c['fake_sparse'].update(type='STRFakeSparse'), 'fake_sparse.type'),
    (lambda c: c['fake_sparse'].update(kwargs=dict(sInit_value=-5)), 'sInit_value'),
    (lambda c: c['mask_generator'].update(type='Nope'), 'mask_generator.type'),
    (lambda c: c.update(leaf_module=3), 'leaf_module'),
])
def test_invalid_config_names_key(mutate, key):
    cfg = amba_cfg()
    mutate(cfg)
    with pytest.raises(SparsityConfigError) as err:
        build_sparse_scheduler(cfg)
    assert key in str(err.value)


def test_valid_short_shape_and_seed_configs_build():
    cfg = amba_cfg(default_input_shape=[1, 3])
    assert build_sparse_scheduler(cfg).cfg['default_input_shape'] == [1, 3]
    # The three seed configs (002) build as written.
    build_sparse_scheduler(dict(scheduler=dict(type='AmpereScheduler', kwargs=dict(
        mask_calculator='m4n2_1d', allow_recompute_mask=False,
        allow_permutation=False, verbosity=0))))
    build_sparse_scheduler(dict(
        mask_generator=dict(type='STRMaskGenerator'),
        fake_sparse=dict(type='STRFakeSparse', kwargs=dict(sInit_value=-5)),
        scheduler=dict(type='BaseScheduler')))
    # The seed-001 kwargs (prun_algo_tuning, dw_no_prune) and leaf_module.
    cfg = amba_cfg(prun_algo_tuning=0.5, dw_no_prune=False)
    cfg['leaf_module'] = ['Space2Depth', 'FrozenBatchNorm2d']
    build_sparse_scheduler(cfg)


# --- mask math ---------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(out_c=st.integers(1, 12), in_groups=st.integers(1, 6),
       k=st.sampled_from([(), (1, 1), (3, 3)]), sparsity=st.floats(0, 1),
       seed=st.integers(0, 1000))
def test_mask_invariants(out_c, in_groups, k, sparsity, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_c, 4 * in_groups, *k, generator=g)
    m = nm_mask(w)
    assert nm_compliant(w * m) and int(m.sum()) == w.numel() // 2
    keep = magnitude_mask(w, sparsity)
    assert int((~keep).sum()) == int(round(sparsity * w.numel()))


def test_magnitude_mask_exact_fraction():
    w = torch.randn(64, 32, 3, 3)
    m = magnitude_mask(w, 0.7)
    assert abs((~m).float().mean().item() - 0.7) < 1e-3
    assert w[m].abs().min() >= w[~m].abs().max()


def test_nm_mask_groups_along_input_channels():
    w = torch.randn(16, 32, 3, 3)
    m = nm_mask(w, 2, 4)
    assert nm_compliant(w * m)
    groups = m.movedim(1, -1).reshape(-1, 4)
    assert (groups.sum(1) == 2).all()
    assert not nm_compliant(w)
    # The two largest of every group are kept.
    wg = w.abs().movedim(1, -1).reshape(-1, 4)
    kept_min = torch.where(groups, wg, torch.full_like(wg, 1e9)).min(1).values
    dropped_max = torch.where(~groups, wg, torch.zeros_like(wg)).max(1).values
    assert (kept_min >= dropped_max).all()


def test_block_mask_tile_aligned():
    torch.manual_seed(0)
    w = torch.randn(130, 100, 3, 3)  # ragged edges: 2x3 full tiles
    m = block_mask(w, 0.5)
    assert block_aligned(m)
    assert int((~m).sum()) == 3 * 64 * 32 * 9
    assert m[128:].all() and m[:, 96:].all()  # ragged edges stay dense
    assert block_mask(torch.randn(64, 32, 3, 3), 0.9).all()  # last tile kept
    bad = m.clone()
    bad[129, 0, 0, 0] = False  # a lone zero in the dense edge
    assert not block_aligned(bad)
    partial = m.clone()
    partial[:64, :32] = True
    partial[:64, :16] = False  # half a tile
    assert not block_aligned(partial)


def test_projection_meets_budget():
    torch.manual_seed(0)
    scores = [torch.rand(50), torch.rand(30, 2)]
    project_to_budget(scores, 40.0)
    total = sum(float(s.sum()) for s in scores)
    assert abs(total - 40.0) < 1e-3
    assert all(float(s.min()) >= 0 and float(s.max()) <= 1 for s in scores)


# --- fake sparse / preparation -----------------------------------------------
def test_prepare_masks_round_trip_and_no_prune():
    model = resnet20()
    ref = copy.deepcopy(model)
    sched = build_sparse_scheduler(amba_cfg(
        no_prune_layer='backbone.conv1', no_prune_keyword=['downsample']))
    sched.prepare_sparse_model(model)
    assert 'backbone.conv1' not in sched.layers
    assert not any('downsample' in n for n in sched.layers)
    assert 'fc' in sched.layers and len(sched.layers) == 19
    assert type(model.backbone.conv1) is nn.Conv2d  # stays dense
    assert torch.equal(model.backbone.conv1.weight, ref.backbone.conv1.weight)
    sd = model.state_dict()
    mask_keys = [k for k in sd if k.endswith('weight_fake_sparse.mask')]
    assert len(mask_keys) == 19
    assert 'fc.weight' in sd  # the dense weight keeps its key
    # Masks round-trip through state_dict into a freshly prepared model.
    other = resnet20()
    sched2 = build_sparse_scheduler(amba_cfg(
        no_prune_layer='backbone.conv1', no_prune_keyword=['downsample']))
    sched2.prepare_sparse_model(other, init_masks=False)
    assert abs(sched2.global_sparsity()) < 1e-9
    other.load_state_dict(sd)
    assert abs(sched2.global_sparsity() - 0.3) < 0.015
    x = torch.randn(2, 1, 28, 28)
    model.eval()
    other.eval()
    assert torch.allclose(model(x), other(x))
    # Stripping bakes the masks into plain layers with the same output.
    out = model(x)
    strip_fake_sparse(model)
    assert type(model.fc) is nn.Linear
    assert torch.allclose(model(x), out, atol=1e-6)


def test_dense_checkpoint_loads_into_prepared_model():
    model = resnet20()
    dense_sd = copy.deepcopy(model.state_dict())
    sched = build_sparse_scheduler(amba_cfg())
    sched.prepare_sparse_model(model, init_masks=False)
    missing, unexpected = model.load_state_dict(dense_sd, strict=False)
    assert not unexpected and all(k.endswith('.mask') for k in missing)


def test_leaf_module_layers_stay_dense():
    model = resnet20()
    sched = build_sparse_scheduler(dict(amba_cfg(), leaf_module=['ResLayer']))
    sched.prepare_sparse_model(model)
    # Every conv of the residual stages sits inside a ResLayer leaf.
    assert set(sched.layers) == {'backbone.conv1', 'fc'}


# --- Amba --------------------------------------------------------------------
@pytest.mark.parametrize('prun_algo', [1, 0])
def test_amba_stages_lr_restart_and_checkpoints(tmp_path, prun_algo):
    model = resnet20()
    table = [30, 50, 70]
    sched = build_sparse_scheduler(amba_cfg(
        total_iters=10, sparsity_table=table, prun_algo=prun_algo,
        do_sparse_analysis=True, output_dir=str(tmp_path / 'ana'),
        save_dir=str(tmp_path / 'ckpt'), no_prune_layer='backbone.conv1'))
    model = sched.prepare_sparse_model(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    lr_sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=3)
    sched.set_lr_scheduler(lr_sched)
    lrs, sparsity = [], []
    for x, y in batches(10):
        lrs.append(opt.param_groups[0]['lr'])
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sparsity.append(sched.global_sparsity())  # of the iteration just run
        lr_sched.step()  # the only call: drives stages and restarts
    # Stages of 3, 3 and 4 iterations; LR restarts at iterations 3 and 6.
    assert lrs[0] == lrs[3] == lrs[6] == 0.1
    assert lrs[1] < 0.1 and lrs[4] < 0.1 and lrs[7] < 0.1
    for stage, end in enumerate([3, 6, 10]):
        achieved = sparsity[end - 1]  # at the end of the stage
        assert abs(achieved - table[stage] / 100) <= 0.015, (stage, achieved)
        name = f'global_sparse_rate_{table[stage]}.pth.tar'
        ckpt = torch.load(tmp_path / 'ckpt' / name, weights_only=True)
        assert abs(ckpt['global_sparsity'] - table[stage] / 100) <= 0.015
        assert ckpt['stage'] == stage
    layer_sp = sched.layer_sparsity()
    if prun_algo == 1:
        # Energy allocation: the low-resolution stage keeps more weights.
        first = [v for n, v in layer_sp.items() if 'layer1' in n]
        last = [v for n, v in layer_sp.items() if 'layer3' in n]
        assert sum(last) / len(last) < sum(first) / len(first)
    else:
        assert max(layer_sp.values()) - min(layer_sp.values()) < 0.02
    assert model.backbone.conv1.weight.ne(0).all()  # no_prune_layer
    # Analysis files with the documented columns.
    dict_lines = (tmp_path / 'ana' / 'dict_prun_table.txt').read_text().splitlines()
    assert dict_lines[0].split('\t') == ['layer', 'type', 'weight_shape', 'params',
                                         'macs', 'out_positions', 'stride_group',
                                         'depthwise']
    assert any(line.startswith('# total_dense_macs\t') for line in dict_lines)
    desire = (tmp_path / 'ana' / 'desrie_prun_table.txt').read_text().splitlines()
    assert desire[0].split('\t') == ['layer', 'sparsity_30', 'sparsity_50',
                                     'sparsity_70']
    rows = {r.split('\t')[0]: r.split('\t')[1:] for r in desire[1:]}
    assert abs(float(rows['global'][2]) - 70) <= 1.5
    dense, sparse = int(rows['dense_macs'][0]), [int(v) for v in rows['sparse_macs']]
    assert dense > sparse[0] > sparse[1] > sparse[2] > 0


def test_amba_state_dict_resume_mid_stage():
    model = resnet20()
    sched = build_sparse_scheduler(amba_cfg(total_iters=6, sparsity_table=[40, 60]))
    sched.prepare_sparse_model(model)
    sched.update(4)  # in stage 1
    state = copy.deepcopy(sched.state_dict())
    model_sd = copy.deepcopy(model.state_dict())
    model2 = resnet20()
    sched2 = build_sparse_scheduler(amba_cfg(total_iters=6, sparsity_table=[40, 60]))
    sched2.prepare_sparse_model(model2, init_masks=False)
    sched2.load_state_dict(state)
    model2.load_state_dict(model_sd)
    sched2.update(4)  # no recomputation after resume
    assert sched2.applied_stage == 1
    for (n, a), b in zip(sched.layers.items(), sched2.layers.values()):
        assert torch.equal(a.weight_fake_sparse.mask, b.weight_fake_sparse.mask), n


# --- Ampere 2:4 --------------------------------------------------------------
@pytest.mark.parametrize('recompute', [False, True])
def test_ampere_2to4_eligible_layers_after_steps(recompute):
    model = resnet20()
    sched = build_sparse_scheduler(dict(scheduler=dict(
        type='AmpereScheduler', kwargs=dict(
            mask_calculator='m4n2_1d', allow_recompute_mask=recompute,
            allow_permutation=False, verbosity=0))))
    model = sched.prepare_sparse_model(model)
    # in=1 stem and the 64->10 classifier are not 2:4 eligible.
    assert 'backbone.conv1' in sched.skipped and 'fc' in sched.skipped
    assert len(sched.layers) == 20  # 18 block convs + 2 downsample convs
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    sched.init_optimizer(opt)
    for x, y in batches(3):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()  # the only call: masks re-applied
    for name, layer in sched.layers.items():
        assert nm_compliant(layer.weight), name
        if not recompute:  # stored weights are 2:4 too
            assert nm_compliant(dense_weight(layer)), name
    assert abs(sched.global_sparsity() - 0.5) < 1e-6


def test_ampere_permutation_keeps_function_and_raises_magnitude():
    torch.manual_seed(0)
    model = WideNet().eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = model(x)
    before = kept_magnitude_nm(model.conv2.weight)
    sched = build_sparse_scheduler(dict(scheduler=dict(
        type='AmpereScheduler', kwargs=dict(
            allow_permutation=True, allow_recompute_mask=True,
            permutation_iters=100))))
    sched.prepare_sparse_model(model, init_masks=False)
    sched.search_permutations()
    report = sched.permutation_report
    assert 'conv2' in report  # conv1 -> bn1 -> relu -> conv2 chain
    b, a = report['conv2']
    assert abs(b - before) < 1e-3 and a > b
    # Same function with dense masks (the permutation is exact).
    with torch.no_grad():
        assert torch.allclose(model(x), ref, atol=1e-4)


# --- STR ---------------------------------------------------------------------
def test_str_formula_and_learned_sparsity():
    model = resnet20()
    sched = build_sparse_scheduler(dict(
        mask_generator=dict(type='STRMaskGenerator'),
        fake_sparse=dict(type='STRFakeSparse', kwargs=dict(sInit_value=-3)),
        scheduler=dict(type='BaseScheduler')))
    model = sched.prepare_sparse_model(model)
    layer = sched.layers['backbone.layer1.0.conv1']
    w = dense_weight(layer)
    thr = torch.sigmoid(torch.tensor(-3.0))
    expect = torch.sign(w) * torch.relu(w.abs() - thr)
    assert torch.allclose(layer.weight, expect)
    s0 = sched.global_sparsity()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, weight_decay=0.05)
    sched.init_optimizer(opt)
    s_before = layer.weight_fake_sparse.s.item()
    for x, y in batches(4):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    assert layer.weight_fake_sparse.s.item() != s_before  # thresholds learn
    assert sched.global_sparsity() > s0
    # The mask buffer mirrors W_eff != 0 (STRMaskGenerator) and round-trips.
    assert torch.equal(layer.weight_fake_sparse.mask.bool(), layer.weight != 0)
    sd = model.state_dict()
    assert 'backbone.layer1.0.conv1.weight_fake_sparse.s' in sd


# --- ProbMask ----------------------------------------------------------------
def test_probmask_budget_temperature_and_ramp():
    model = resnet20()
    total = 12
    sched = build_sparse_scheduler(dict(scheduler=dict(
        type='ProbMaskScheduler', kwargs=dict(
            total_iters=total, target_sparsity=0.6, init_temp=1.0,
            final_temp=0.1, ramp_end=0.5))))
    model = sched.prepare_sparse_model(model)
    assert sched.current_sparsity(0) == 0
    assert abs(sched.current_sparsity(3) - 0.6 * (1 - 0.5 ** 3)) < 1e-9
    assert sched.current_sparsity(6) == pytest.approx(0.6)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched.init_optimizer(opt)  # counts iterations: no LR scheduler given
    seen = []
    for x, y in batches(total):
        model.train()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        seen.append(sched.global_sparsity())
    assert sched.cur_iter == total
    assert abs(seen[-1] - 0.6) < 0.002  # hard eval mask meets the target
    assert seen[2] < seen[5]  # ramping up
    fs = sched.layers['fc'].weight_fake_sparse
    assert float(fs.temperature) == pytest.approx(0.1)
    n = sum(layer.weight.numel() for layer in sched.layers.values())
    budget = sum(float(lay.weight_fake_sparse.scores.sum())
                 for lay in sched.layers.values())
    assert budget == pytest.approx(0.4 * n, rel=1e-3)
    model.eval()
    assert sched.global_sparsity() == pytest.approx(
        1 - sum(float((lay.weight != 0).sum()) for lay in sched.layers.values()) / n,
        abs=1e-6)


# --- Knight block / 2:4 ------------------------------------------------------
def test_block_sparsity_aligned_tiles_and_steps():
    torch.manual_seed(0)
    model = WideNet()
    sched = build_sparse_scheduler(dict(scheduler=dict(
        type='BlockSparseScheduler',
        kwargs=dict(sparsity_method='CustomPruner', target_sparsity=0.5))))
    model = sched.prepare_sparse_model(model)
    assert set(sched.layers) == {'conv2', 'conv3', 'fc'}
    assert 'big' in sched.skipped and 'conv1' in sched.skipped
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    sched.init_optimizer(opt)
    for x, y in batches(2, shape=(4, 3, 16, 16), classes=64):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    for name, layer in sched.layers.items():
        w = dense_weight(layer)
        assert block_aligned(w), name
        tiles = (w.shape[0] // 64) * (w.shape[1] // 32)
        zero = int((w == 0).sum()) // (64 * 32 * (w[0, 0].numel()))
        assert zero == round(0.5 * tiles), name


def test_pruner2to4_and_bad_target():
    model = WideNet()
    sched = build_sparse_scheduler(dict(scheduler=dict(
        type='BlockSparseScheduler',
        kwargs=dict(sparsity_method='Pruner2to4', target_sparsity=0.5))))
    sched.prepare_sparse_model(model)
    assert all(nm_compliant(layer.weight) for layer in sched.layers.values())
    with pytest.raises(SparsityConfigError, match='target_sparsity'):
        build_sparse_scheduler(dict(scheduler=dict(
            type='BlockSparseScheduler',
            kwargs=dict(sparsity_method='Pruner2to4', target_sparsity=0.7))))
