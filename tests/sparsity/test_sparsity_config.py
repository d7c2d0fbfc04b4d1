"""Sparsity config validation: every bad key is named; the seed configs
build (sparsity/config.py, sparsity/builder.py)."""
import pytest

from helpers.sparsity import amba_cfg
from mmrazor_ext.sparsity import SparsityConfigError, build_sparse_scheduler


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
