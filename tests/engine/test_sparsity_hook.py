"""SparsityHook: through tools/train.py (stages, stage checkpoints,
analysis files, ``--resume`` mid-stage for Amba masks / stage and STR
thresholds), its optimizer group and masks for dense checkpoints
(engine/hooks/sparsity_hook.py)."""
import os

import torch

from helpers import PY, ROOT, run_tool
from helpers.models import resnet20
from helpers.sparsity import load, masks

TRAIN = [PY, os.path.join(ROOT, 'tools', 'train.py')]


def data_opts(root):
    opts = ['--cfg-options']
    for split in ('train', 'val', 'test'):
        opts += [f'{split}_dataloader.dataset.data_root={root}',
                 f'{split}_dataloader.num_workers=0',
                 f'{split}_dataloader.persistent_workers=False']
    return opts + ['train_dataloader.batch_size=8']


def iter_config(tmp_path, base, max_iters, stage_len, ckpt_interval, extra=''):
    """A config running ``base`` for ``max_iters`` iterations (IterBased, so a
    resume continues with exactly the same batches)."""
    path = tmp_path / f'{os.path.basename(base)[:-3]}_iters.py'
    path.write_text(f"""
_base_ = [{os.path.join(ROOT, base)!r}]
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters={max_iters},
                 val_interval=10000)
param_scheduler = dict(_delete_=True, type='OneCycleLR', eta_max=0.05,
                       pct_start=0.5, by_epoch=False, begin=0, end={stage_len})
default_hooks = dict(checkpoint=dict(by_epoch=False, interval={ckpt_interval},
                                     save_best=None, max_keep_ckpts=5),
                     logger=dict(interval=1))
{extra}
""")
    return str(path)


def test_amba_hook_stages_and_resume_mid_stage(tiny_fmnist, tmp_path):
    cfg = iter_config(tmp_path, 'configs/sparsity/amba_resnet20_1xb128_fashionmnist.py',
                      max_iters=12, stage_len=4, ckpt_interval=6)
    a, b = tmp_path / 'a', tmp_path / 'b'
    run_tool(TRAIN + [cfg, '--work-dir', str(a)] + data_opts(tiny_fmnist))
    for s in (30, 50, 70):
        ckpt = load(a / 'sparse_ckpts' / f'global_sparse_rate_{s}.pth.tar')
        assert abs(ckpt['global_sparsity'] - s / 100) <= 0.015
        assert len(masks(ckpt['state_dict'])) == 22  # every conv + fc
    # Analysis files (do_sparse_analysis=True in the config).
    desire = (a / 'sparse_analysis' / 'desrie_prun_table.txt').read_text()
    assert desire.splitlines()[0] == 'layer\tsparsity_30\tsparsity_50\tsparsity_70'
    assert (a / 'sparse_analysis' / 'dict_prun_table.txt').exists()

    # Runner checkpoints hold mmengine objects: trusted, our own files.
    mid = torch.load(a / 'iter_6.pth', map_location='cpu', weights_only=False)
    state = mid['sparsity']['state']
    assert state['applied_stage'] == 1 and state['cur_iter'] == 6
    assert state['saved_stages'] == [0]

    # Resume in a new work dir from the mid-stage checkpoint.
    proc = run_tool(TRAIN + [cfg, '--work-dir', str(b), '--resume',
                             str(a / 'iter_6.pth')] + data_opts(tiny_fmnist))
    assert 'SparsityHook: resumed' in proc.stdout + proc.stderr
    # Stage 0 is not redone, stages 1-2 are finished and saved.
    assert sorted(os.listdir(b / 'sparse_ckpts')) == [
        'global_sparse_rate_50.pth.tar', 'global_sparse_rate_70.pth.tar']
    # Stage-1 masks are the ones of the checkpoint (not recomputed).
    m_mid = masks(mid['state_dict'])
    b50 = load(b / 'sparse_ckpts' / 'global_sparse_rate_50.pth.tar')
    m_b50 = masks(b50['state_dict'])
    assert all(torch.equal(m_mid[k], m_b50[k]) for k in m_mid)
    # Evaluating a stage checkpoint (train_sparse.sh -e): masks load with it.
    proc = run_tool([os.path.join(ROOT, 'tools', 'train_sparse.sh'), cfg, '1', '-e',
                     str(a / 'sparse_ckpts' / 'global_sparse_rate_70.pth.tar'),
                     '--work-dir', str(tmp_path / 'ev')] + data_opts(tiny_fmnist))
    log = proc.stdout + proc.stderr
    assert 'Epoch(test)' in log and 'accuracy/top1' in log
    assert 'missing keys' not in log and 'unexpected key' not in log
    # The resumed run ends exactly where the uninterrupted one did.
    end_a = torch.load(a / 'iter_12.pth', map_location='cpu', weights_only=False)
    end_b = torch.load(b / 'iter_12.pth', map_location='cpu', weights_only=False)
    for k, v in end_a['state_dict'].items():
        assert torch.allclose(v.float(), end_b['state_dict'][k].float(), atol=1e-6), k


def test_str_hook_thresholds_survive_resume(tiny_fmnist, tmp_path):
    cfg = iter_config(tmp_path, 'configs/sparsity/str_resnet20_1xb128_fashionmnist.py',
                      max_iters=6, stage_len=6, ckpt_interval=3,
                      extra='optim_wrapper = dict(optimizer=dict(lr=0.2, '
                            'weight_decay=0.05))')
    a, b = tmp_path / 'a', tmp_path / 'b'
    run_tool(TRAIN + [cfg, '--work-dir', str(a)] + data_opts(tiny_fmnist))
    mid = torch.load(a / 'iter_3.pth', map_location='cpu', weights_only=False)
    s_keys = [k for k in mid['state_dict'] if k.endswith('weight_fake_sparse.s')]
    assert len(s_keys) == 22
    # The thresholds were given to the optimizer and trained.
    assert len(mid['optimizer']['param_groups']) == 2
    assert any(float(mid['state_dict'][k]) != -5.0 for k in s_keys)
    run_tool(TRAIN + [cfg, '--work-dir', str(b), '--resume',
                      str(a / 'iter_3.pth')] + data_opts(tiny_fmnist))
    end_a = torch.load(a / 'iter_6.pth', map_location='cpu', weights_only=False)
    end_b = torch.load(b / 'iter_6.pth', map_location='cpu', weights_only=False)
    for k in s_keys + [k for k in end_a['state_dict'] if k.endswith('.mask')]:
        assert torch.allclose(end_a['state_dict'][k].float(),
                              end_b['state_dict'][k].float(), atol=1e-6), k


def test_scheduler_declares_its_optimizer_group():
    """SparsityHook adds the fake-sparse parameters with group 0's settings
    updated by the scheduler's ``extra_param_group`` (ProbMask: no weight
    decay on keep probabilities), with no scheduler-specific branch."""
    import logging
    from types import SimpleNamespace

    from mmengine.optim import OptimWrapper

    import mmrazor_ext.engine.hooks.sparsity_hook as hook_module
    from mmrazor_ext.engine.hooks import SparsityHook
    from mmrazor_ext.models import CifarResNet
    with open(hook_module.__file__) as f:
        assert 'ProbMaskScheduler' not in f.read()

    def run(scheduler):
        model = CifarResNet(20, 10, 1)
        optim = torch.optim.SGD(model.parameters(), lr=0.1,
                                weight_decay=5e-4)
        runner = SimpleNamespace(
            model=model, max_iters=10, work_dir='unused',
            optim_wrapper=OptimWrapper(optim), param_schedulers=None,
            logger=logging.getLogger('test_sparsity_runner'))
        hook = SparsityHook(dict(scheduler=scheduler))
        hook.before_run(runner)
        return hook.scheduler, optim.param_groups

    sched, groups = run(dict(type='ProbMaskScheduler', kwargs=dict(
        target_sparsity=0.5)))
    assert sched.extra_param_group() == {'weight_decay': 0.0}
    assert len(groups) == 2 and groups[1]['weight_decay'] == 0.0
    assert groups[1]['lr'] == groups[0]['lr'] == 0.1
    assert {id(p) for p in groups[1]['params']} == {
        id(p) for p in sched.extra_parameters()}
    sched, groups = run(dict(type='STRScheduler', kwargs=dict()))
    assert sched.extra_param_group() == {}
    assert len(groups) == 2 and groups[1]['weight_decay'] == 5e-4


def test_hook_fills_masks_for_dense_checkpoint():
    from types import SimpleNamespace

    from mmengine.logging import MMLogger

    from mmrazor_ext.engine.hooks import SparsityHook
    model = resnet20()
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    hook = SparsityHook(dict(scheduler=dict(type='AmpereScheduler')))
    runner = SimpleNamespace(model=model, _resume=False,
                             logger=MMLogger.get_current_instance())
    hook.scheduler.prepare_sparse_model(model, init_masks=False)
    hook._prepared = True
    ckpt = {'state_dict': dense, 'meta': {}}
    hook.after_load_checkpoint(runner, ckpt)
    missing, unexpected = model.load_state_dict(ckpt['state_dict'], strict=True)
    assert not missing and not unexpected
    assert sum(k.endswith('weight_fake_sparse.mask') for k in ckpt['state_dict']) == 20
