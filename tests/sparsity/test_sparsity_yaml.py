"""MSBench / UP sparsity YAML (seeds/001, 002): the seed's layout (top-level
``sparsity:`` with ``leaf_module:`` beside it, ``total_iters: None``) builds
the same scheduler as the equivalent dict; YAML text is converted where the
schema wants another type, or is an error naming the key."""
import pytest
import yaml

from mmrazor_ext.sparsity import (
    SparsityConfigError,
    build_sparse_scheduler,
    load_sparsity_yaml,
)

# seeds/001, "All experiments use the following sparsity_config" (Amba), as
# written there.
SEED_AMBA = """\
sparsity:
  mask_generator:
    type: NormalMaskGenerator
  fake_sparse:
    type: FakeSparse
  scheduler:
    type: AmbaLevelPruneScheduler
    kwargs:
      total_iters: None
      sparsity_table: [30,40,50,60,70,80,90]
      no_prune_keyword: ''
      no_prune_layer: ''
      prun_algo: 1
      prun_algo_tuning: 0.5
      dw_no_prune: False
      do_sparse_analysis: False
      default_input_shape: [1,3,1333,1333]  # choose your input shape
      output_dir: path_to_sparse_analysis
      save_dir: path_to_sparse_ckpts
leaf_module: [Space2Depth, FrozenBatchNorm2d]
"""
SEED_AMBA_DICT = dict(
    mask_generator=dict(type='NormalMaskGenerator'),
    fake_sparse=dict(type='FakeSparse'),
    scheduler=dict(type='AmbaLevelPruneScheduler', kwargs=dict(
        total_iters=None, sparsity_table=[30, 40, 50, 60, 70, 80, 90],
        no_prune_keyword='', no_prune_layer='', prun_algo=1,
        prun_algo_tuning=0.5, dw_no_prune=False, do_sparse_analysis=False,
        default_input_shape=[1, 3, 1333, 1333],
        output_dir='path_to_sparse_analysis', save_dir='path_to_sparse_ckpts')),
    leaf_module=['Space2Depth', 'FrozenBatchNorm2d'])
# seeds/001, the Ampere one.
SEED_AMPERE = """\
sparsity:
  scheduler:
    type: AmpereScheduler
    kwargs:
      mask_calculator: m4n2_1d
      allow_recompute_mask: False
      allow_permutation: False
      verbosity: 0
"""
SEED_AMPERE_DICT = dict(scheduler=dict(type='AmpereScheduler', kwargs=dict(
    mask_calculator='m4n2_1d', allow_recompute_mask=False,
    allow_permutation=False, verbosity=0)))


def summary(sched):
    """What a built scheduler is made of."""
    return (type(sched), sched.cfg, sched.leaf_module,
            type(sched.mask_generator), sched.fake_sparse_cls,
            sched.fake_sparse_kwargs)


def write(tmp_path, text, name='sparse.yaml'):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize('text, equivalent', [
    (SEED_AMBA, SEED_AMBA_DICT), (SEED_AMPERE, SEED_AMPERE_DICT)],
    ids=['amba', 'ampere'])
def test_seed_yaml_builds_the_same_scheduler_as_the_dict(tmp_path, text,
                                                         equivalent):
    expected = summary(build_sparse_scheduler(equivalent))
    path = write(tmp_path, text)
    # A path (str or Path), or the parsed mapping in the seed's layout.
    for source in (str(path), path, yaml.safe_load(text)):
        assert summary(build_sparse_scheduler(source)) == expected
    if 'Amba' in text:
        sched = build_sparse_scheduler(path)
        assert sched.total_iters is None  # the string 'None' -> None
        assert sched.leaf_module == ['Space2Depth', 'FrozenBatchNorm2d']


def test_flat_msbench_yaml_and_leaf_module_inside(tmp_path):
    """MSBench's own layout (no ``sparsity:``) loads too, and leaf_module
    may sit inside the block (the same value beside it is fine)."""
    flat = '\n'.join(line[2:] if line.startswith('  ') else line
                     for line in SEED_AMBA.splitlines()[1:])
    expected = summary(build_sparse_scheduler(SEED_AMBA_DICT))
    assert summary(build_sparse_scheduler(write(tmp_path, flat))) == expected
    inside = SEED_AMBA.replace('leaf_module:', '  leaf_module:')
    assert summary(build_sparse_scheduler(write(tmp_path, inside))) == expected
    both = inside + 'leaf_module: [Space2Depth, FrozenBatchNorm2d]\n'
    assert summary(build_sparse_scheduler(write(tmp_path, both))) == expected


@pytest.mark.parametrize('line, key, value', [
    ('total_iters: null', 'total_iters', None),
    ('total_iters: ~', 'total_iters', None),
    ('total_iters: none', 'total_iters', None),
    ("total_iters: '120'", 'total_iters', 120),
    ('prun_algo_tuning: 5e-1', 'prun_algo_tuning', 0.5),  # YAML 1.1: a str
    ("prun_algo: '0'", 'prun_algo', 0),
    ("dw_no_prune: 'true'", 'dw_no_prune', True),
    ('save_dir: None', 'save_dir', None),
    ('output_dir: sparse_analysis', 'output_dir', 'sparse_analysis'),
])
def test_yaml_text_is_converted(tmp_path, line, key, value):
    old = [x for x in SEED_AMBA.splitlines() if f' {key}:' in x][0]
    text = SEED_AMBA.replace(old, ' ' * 6 + line)
    sched = build_sparse_scheduler(write(tmp_path, text))
    assert sched.cfg[key] == value
    assert type(sched.cfg[key]) is type(value)


@pytest.mark.parametrize('line, key', [
    ('total_iters: ten', 'scheduler.kwargs.total_iters'),
    ("prun_algo: '1.5'", 'scheduler.kwargs.prun_algo'),
    ("sparsity_table: ['30', '50']", 'scheduler.kwargs.sparsity_table'),
    ('dw_no_prune: maybe', 'scheduler.kwargs.dw_no_prune'),
    ('verbosity: 0', 'scheduler.kwargs.verbosity'),  # Ampere's, not Amba's
])
def test_yaml_text_that_does_not_convert_names_the_key(tmp_path, line, key):
    name = line.split(':')[0]
    old = [x for x in SEED_AMBA.splitlines() if f' {name}:' in x]
    text = SEED_AMBA.replace(old[0], ' ' * 6 + line) if old else \
        SEED_AMBA.replace('      prun_algo: 1\n', f'      prun_algo: 1\n      {line}\n')
    with pytest.raises(SparsityConfigError) as err:
        build_sparse_scheduler(write(tmp_path, text))
    assert key in str(err.value)


def test_layout_errors_name_the_key(tmp_path):
    # A tab in an indentation: YAML forbids it; the message names the line.
    tabbed = SEED_AMBA.replace('    type: FakeSparse', '\ttype: FakeSparse')
    with pytest.raises(SparsityConfigError, match='line 5: a tab'):
        build_sparse_scheduler(write(tmp_path, tabbed))
    # A key beside sparsity that is not leaf_module.
    with pytest.raises(SparsityConfigError, match='^leaf_modul: unknown key'):
        build_sparse_scheduler(write(
            tmp_path, SEED_AMBA.replace('leaf_module:', 'leaf_modul:')))
    # ... unless the caller reads it itself.
    assert load_sparsity_yaml(
        yaml.safe_load(SEED_AMPERE + 'app_args: {arch: r50}\n'),
        extra_keys=['app_args']) == SEED_AMPERE_DICT
    # leaf_module inside and beside, different.
    conflict = SEED_AMBA.replace('  mask_generator:',
                                 '  leaf_module: [Other]\n  mask_generator:')
    with pytest.raises(SparsityConfigError, match='^leaf_module: given both'):
        build_sparse_scheduler(write(tmp_path, conflict))
    with pytest.raises(SparsityConfigError, match='^sparsity: must be a mapping'):
        build_sparse_scheduler(write(tmp_path, 'sparsity: [1, 2]\n'))
    with pytest.raises(SparsityConfigError, match='must hold a mapping'):
        build_sparse_scheduler(write(tmp_path, '- 1\n'))
    with pytest.raises(FileNotFoundError, match='no_such.yaml'):
        build_sparse_scheduler(str(tmp_path / 'no_such.yaml'))
    # Section-level None text: kwargs None, leaf_module None.
    sched = build_sparse_scheduler(dict(
        scheduler=dict(type='AmpereScheduler', kwargs='None'),
        leaf_module='~'))
    assert sched.leaf_module == [] and sched.cfg['verbosity'] == 0
