"""CompressionRecipe without a Runner: stage checks, misfits, the
checkpointed recipe state (the end-to-end runs are in
engine/test_recipe_loop.py)."""
import copy

import pytest
import torch

AMPERE = dict(scheduler=dict(type='AmpereScheduler', kwargs=dict()))
PRUNE = dict(type='OneShotPruning', metric='l1',
             target=dict(mode='flops', ratio=0.5), bn_recalib_batches=0,
             epochs=1)


def _arch():
    return dict(type='mmpretrain.ImageClassifier',
                backbone=dict(type='ResNet_CIFAR', depth=20, in_channels=1),
                neck=dict(type='mmpretrain.GlobalAveragePooling'),
                head=dict(type='mmpretrain.LinearClsHead', num_classes=10,
                          in_channels=64,
                          loss=dict(type='mmpretrain.CrossEntropyLoss')),
                data_preprocessor=dict(type='mmpretrain.ClsDataPreprocessor',
                                       mean=[72.9], std=[90.0]))


def _recipe(stages, seed=0):
    from mmrazor_ext.registry import MODELS, register_all_modules
    register_all_modules(init_default_scope=True)
    torch.manual_seed(seed)
    return MODELS.build(dict(type='mmrazor_ext.CompressionRecipe',
                             architecture=_arch(), stages=stages,
                             input_shape=(1, 1, 28, 28), latency_batch=2))


@pytest.mark.parametrize('stages, field', [
    ([dict(type='Quantize')], r'stages\[0\]\.type: unknown stage type'),
    ([dict(PRUNE, bogus=1)], r'stages\[0\]\.bogus: unknown key for '
                             'OneShotPruning'),
    ([dict(PRUNE, fuse_bn=True)], r'stages\[0\]\.fuse_bn: .*Deploy'),
    ([dict(sparsity=AMPERE, epochs=-1)], r'stages\[0\]\.epochs'),
    ([dict(sparsity=AMPERE, mode=1)], r'stages\[0\]\.mode: unknown key'),
    ([dict(sparsity=AMPERE, misfit='warn')], r'stages\[0\]\.misfit'),
    ([dict(type='Deploy'), dict(sparsity=AMPERE)],
     r'stages\[0\]\.type: Deploy must be the last'),
    ([dict(type='Deploy', onnx='yes')], r'stages\[0\]\.onnx must be a bool'),
    ([dict(sparsity=AMPERE), PRUNE], r'stages\[1\]\.type: OneShotPruning '
                                     'after a sparsity stage'),
    ([], 'stages: must be a non-empty list'),
])
def test_bad_stages_name_the_field(stages, field):
    from mmrazor_ext.algorithms.recipe import RecipeConfigError, check_stages
    with pytest.raises(RecipeConfigError, match=field):
        check_stages(stages)


def test_bad_sparsity_config_names_the_stage():
    from mmrazor_ext.algorithms.recipe import check_stages
    from mmrazor_ext.sparsity.config import SparsityConfigError
    bad = dict(scheduler=dict(type='AmpereScheduler',
                              kwargs=dict(no_such_arg=1)))
    with pytest.raises(SparsityConfigError,
                       match=r'stages\[1\]\.sparsity\.scheduler\.kwargs'):
        check_stages([PRUNE, dict(sparsity=bad)])


def test_divisor_defaults_to_16_before_2of4_only():
    from mmrazor_ext.algorithms.recipe import check_stages
    st = check_stages([PRUNE, dict(sparsity=AMPERE)])
    assert st[0]['kwargs']['pruner'] == {'divisor': 16}
    own = check_stages([dict(PRUNE, pruner=dict(divisor=8)),
                        dict(sparsity=AMPERE)])
    assert own[0]['kwargs']['pruner'] == {'divisor': 8}   # the user's wins
    amba = dict(scheduler=dict(type='AmbaLevelPruneScheduler',
                               kwargs=dict(sparsity_table=[50])))
    assert 'pruner' not in check_stages([PRUNE, dict(sparsity=amba)])[0][
        'kwargs']


def test_misfit_names_the_layer_and_skip_records_it():
    from mmrazor_ext.algorithms.recipe import RecipeMisfitError
    stages = [dict(PRUNE, pruner=dict(divisor=1)), dict(sparsity=AMPERE)]
    recipe = _recipe(stages)
    recipe.enter_stage(0, [])
    with pytest.raises(RecipeMisfitError,
                       match=r"layer 'backbone\.layer\d\.\d\.conv\d' does "
                             r'not fit .*not 2:4 eligible'):
        recipe.enter_stage(1, [])
    skip = _recipe([stages[0], dict(sparsity=AMPERE, misfit='skip')])
    skip.enter_stage(0, [])
    skip.enter_stage(1, [])
    sched = skip.sparse_scheduler
    assert any('not 2:4 eligible' in r for r in sched.skipped.values())
    skip.finish_stage()
    row = skip.rows[-1]
    assert row['index'] == 1
    assert row['skipped_layers'] == dict(sched.skipped)
    assert row['misfit_layers'] and 'backbone.conv1' not in \
        row['misfit_layers']
    assert set(row['misfit_layers']) < set(row['skipped_layers'])
    assert 'backbone.conv1' in row['skipped_layers']   # in=1: never fits


def _masks(model):
    return {k: v.clone() for k, v in model.state_dict().items()
            if k.endswith('weight_fake_sparse.mask')}


def test_recipe_state_rebuilds_pruned_structure_and_masks():
    """What --resume relies on: a fresh recipe loading the state dict of
    one inside its sparsity stage gets the same structure, masks and
    stage, and computes the same outputs."""
    stages = [PRUNE, dict(sparsity=AMPERE, epochs=2)]
    recipe = _recipe(stages)
    recipe.enter_stage(0, [])
    recipe.enter_stage(1, [])
    recipe.after_train_iter(0)
    state = copy.deepcopy(recipe.state_dict())
    assert state['_extra_state']['stage_index'] == 1
    assert len(state['_extra_state']['structures']) == 1

    fresh = _recipe(stages, seed=1)
    before = fresh.state_dict()
    assert any(before[k].shape != v.shape for k, v in state.items()
               if k in before and hasattr(v, 'shape'))   # pruned shapes
    fresh.load_state_dict(state)
    assert fresh.stage_index == 1 and not fresh.stage_finished
    a, b = _masks(recipe), _masks(fresh)
    assert a and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert fresh.sparse_scheduler.state_dict() == \
        recipe.sparse_scheduler.state_dict()
    x = torch.randn(2, 1, 28, 28)
    recipe.eval()
    fresh.eval()
    assert torch.equal(recipe(x), fresh(x))
