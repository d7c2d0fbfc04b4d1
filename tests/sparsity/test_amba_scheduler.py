"""The Amba level-prune scheduler (sparsity/amba_scheduler.py)."""
import copy

import pytest
import torch
import torch.nn.functional as F

from helpers.data import random_batches
from helpers.models import resnet20
from helpers.sparsity import amba_cfg, load
from mmrazor_ext.sparsity import build_sparse_scheduler


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
    for x, y in random_batches(10):
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


def test_size_branching_model_is_prepared_with_an_example_input():
    """A model torch.fx cannot trace symbolically (a Python branch on a
    feature size): the example input, or the config's
    ``default_input_shape``, lets the scheduler find its layers."""
    from torch import nn

    from mmrazor_ext.graph import TraceError

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 16, 3, padding=1)
            self.extra = nn.Conv2d(16, 16, 3, padding=1)
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            x = self.conv(x)
            if x.shape[-1] % 2 == 0:  # a size branch
                x = self.extra(x)
            return self.fc(x.mean((2, 3)))

    x = torch.randn(2, 1, 28, 28)
    with pytest.raises(TraceError):
        build_sparse_scheduler(amba_cfg(default_input_shape=None)) \
            .prepare_sparse_model(Branchy())
    for cfg, kw in ((amba_cfg(default_input_shape=None),
                     dict(example_inputs=x)), (amba_cfg(), {})):
        sched = build_sparse_scheduler(cfg)
        model = Branchy()
        torch.manual_seed(3)
        model = sched.prepare_sparse_model(model, **kw)
        # preparing draws nothing from the global RNG (a seeded run stays
        # the same run)
        drawn = torch.rand(4)
        torch.manual_seed(3)
        assert torch.equal(drawn, torch.rand(4))
        assert sorted(sched.layers) == ['conv', 'extra', 'fc']
        model(x).sum().backward()  # masks apply on the branch taken


def test_stage_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    """A save that dies half way leaves the previous checkpoint whole."""
    sched = build_sparse_scheduler(amba_cfg())
    sched.prepare_sparse_model(resnet20())
    path = str(tmp_path / 'ckpt.pth')
    sched.save_checkpoint(path)
    before = load(path)['global_sparsity']

    def dying_save(obj, f, *a, **k):
        with open(f, 'wb') as fh:
            fh.write(b'half')
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, 'save', dying_save)
    with pytest.raises(KeyboardInterrupt):
        sched.save_checkpoint(path)
    monkeypatch.undo()
    assert load(path)['global_sparsity'] == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['ckpt.pth']
