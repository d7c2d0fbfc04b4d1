"""RecipeLoop through tools/train.py on tiny data: pruning -> 2:4 ->
BN folding -> ONNX end to end, kill + --resume inside the sparsity stage,
a misfit stage (unit checks of the recipe: algorithms/test_recipe.py)."""
import json
import os
import subprocess

import numpy as np
import pytest
import torch

from helpers import PY, ROOT, run_tool, tiny_cfg_options

RECIPE = os.path.join(ROOT, 'configs/recipes/'
                      'recipe_prune-2of4-fold-onnx_resnet20_1xb128_'
                      'fashionmnist.py')


def _args(work_dir, data_root, extra=(), opts=()):
    # Random init (no trained baseline): the structure, masks and resume are
    # what is tested. Stage 0 prunes + 1 epoch, stage 1 is 2 epochs of 2:4.
    tiny = [o for o in tiny_cfg_options(data_root)
            if not o.startswith('train_cfg.max_epochs')]
    return [PY, 'tools/train.py', RECIPE, '--work-dir', str(work_dir),
            *extra, *tiny, 'model.init_checkpoint=None',
            'model.stages.0.epochs=1', 'model.stages.0.bn_recalib_batches=2',
            'model.stages.1.epochs=2', 'model.latency_batch=4',
            'model.eval_batches=1', *opts]


@pytest.fixture(scope='module')
def full_run(tmp_path_factory, tiny_fmnist):
    wd = tmp_path_factory.mktemp('recipe_full')
    run_tool(_args(wd, tiny_fmnist), timeout=900)
    return wd


def _build_arch():
    from mmengine.config import Config

    from mmrazor_ext.registry import MODELS, register_all_modules
    register_all_modules(init_default_scope=True)
    return MODELS.build(Config.fromfile(RECIPE).model.architecture)


def test_prune_2of4_fold_onnx_end_to_end(full_run):
    from mmrazor_ext.algorithms import load_recipe_model
    from mmrazor_ext.sparsity.mask_generators import nm_compliant, nm_eligible
    report = json.loads((full_run / 'recipe_report.json').read_text())
    rows = report['stages']
    assert [r['stage'] for r in rows] == [
        'input', '0 OneShotPruning', '1 Ampere 2:4', '2 Deploy']
    dense, pruned, sparse, deployed = rows
    assert abs(pruned['macs'] / dense['macs'] - 0.5) < 0.02
    assert sparse['nonzero_params'] < 0.6 * pruned['nonzero_params']
    assert sparse['skipped_layers'] == {
        'backbone.conv1': 'shape (16, 1, 3, 3) not 2:4 eligible '
                          '(out%8, in%16, groups=1)',
        'head.fc': 'shape (10, 16) not 2:4 eligible (out%8, in%16, '
                   'groups=1)'}
    assert sparse['misfit_layers'] == []   # divisor 16: nothing narrowed
    assert deployed['deploy']['max_rel_diff'] <= 1e-4
    assert deployed['deploy']['fused_pairs']
    assert (full_run / 'recipe_report.png').read_bytes()[:4] == b'\x89PNG'

    # The folded model rebuilds from the original definition; every layer
    # 2:4 hardware can run is 2:4 after folding (divisor 16 kept them all
    # eligible), and the ONNX file computes what PyTorch computes.
    small = load_recipe_model(_build_arch(), str(full_run /
                                                 'recipe_model.pth')).eval()
    assert not any(isinstance(m, torch.nn.BatchNorm2d)
                   for m in small.modules())
    eligible = {n: m for n, m in small.named_modules()
                if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
                and nm_eligible(m.weight.shape, getattr(m, 'groups', 1))}
    assert set(eligible) == set(sparse['sparsified_layers'])
    assert all(nm_compliant(m.weight) for m in eligible.values())
    import onnxruntime as ort
    sess = ort.InferenceSession(str(full_run / 'recipe_model.onnx'),
                                providers=['CPUExecutionProvider'])
    x = torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = small(x).numpy()
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_kill_and_resume_in_the_sparsity_stage(full_run, tiny_fmnist,
                                              tmp_path):
    """epoch_2.pth is what a run killed during epoch 3 (the second epoch of
    the 2:4 stage) leaves; resuming from it ends with the same weights and
    zero patterns as the uninterrupted run."""
    from mmrazor_ext.engine import safe_load
    ckpt = full_run / 'epoch_2.pth'
    state = safe_load(str(ckpt))['state_dict']['_extra_state']
    assert state['stage_index'] == 1 and not state['stage_finished']
    masks = {k: v for k, v in safe_load(str(ckpt))['state_dict'].items()
             if k.endswith('weight_fake_sparse.mask')}
    assert len(masks) == 20
    proc = run_tool(_args(tmp_path, tiny_fmnist,
                          extra=['--resume', str(ckpt)]), timeout=900)
    log = proc.stdout + proc.stderr
    assert 'recipe: resumed in stage 1 (1 pruning stage(s) re-applied)' in log
    assert 'resumed epoch: 2, iter: 16' in log
    assert 'stage 0 (OneShotPruning) starts' not in log   # not pruned again
    a = safe_load(str(full_run / 'recipe_model.pth'))['state_dict']
    b = safe_load(str(tmp_path / 'recipe_model.pth'))['state_dict']
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), \
        [k for k in a if not torch.equal(a[k], b[k])]


def test_misfit_stage_stops_with_the_layer_named(tmp_path, tiny_fmnist):
    args = _args(tmp_path, tiny_fmnist,
                 opts=['model.stages.0.epochs=0',
                       'model.stages.0.pruner.divisor=1'])
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode != 0
    assert 'RecipeMisfitError: recipe stage 1 (AmpereScheduler): layer ' \
        "'backbone.layer" in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / 'recipe_model.pth').exists()
