"""Every config: its name says what it holds, its model builds through the
registry and runs a forward pass; base configs load and build."""
import glob
import os
import re

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

from helpers import ROOT

CONFIGS = sorted(
    p for p in glob.glob(os.path.join(ROOT, 'configs', '**', '*.py'),
                         recursive=True))
TOP_CONFIGS = [p for p in CONFIGS if '_base_' not in p]
BASE_CONFIGS = [p for p in CONFIGS if '_base_' in p]
# Input size per dataset type; ImageNet nets pool globally, so 64 px is
# enough to exercise them quickly.
SIZES = {'FashionMNIST': 28, 'CIFAR10': 32, 'ImageNet': 64,
         'CocoDetectionTV': 128}

# {algo}_{model}_{gpus}xb{batch}_{data}.py; baselines have no {algo}.
NAME = re.compile(r'^(?:(?P<algo>[a-z0-9_-]+)_)?'
                  r'(?P<model>[a-z][a-z0-9-]*\d[a-z0-9-]*)_'
                  r'(?P<gpus>\d+)xb(?P<batch>\d+)_(?P<data>[a-z0-9]+)\.py$')
DATASETS = {'fashionmnist': 'FashionMNIST', 'cifar10': 'CIFAR10',
            'in1k': 'ImageNet', 'coco': 'CocoDetectionTV'}
# What the {algo} of a name runs: the model type, or the sparse scheduler
# of its SparsityHook.
ALGO_MODELS = {
    None: 'mmpretrain.ImageClassifier',
    'cdp': 'OneShotPruning', 'l1': 'OneShotPruning',
    'taylor': 'OneShotPruning', 'fmrecon': 'OneShotPruning',
    'iter_cdp': 'IterativePruning', 'iter_l1': 'IterativePruning',
    'fusion': 'LayerFusion', 'fusion_l1': 'LayerFusion',
    'fusion_merge': 'LayerFusion',
    'amc': 'AMCPruning',
    'autoslim': 'AutoSlim', 'autoslim_search': 'AutoSlim',
    'autoslim_retrain': 'SubnetModel',
    'hybrid_search': 'HybridSearch', 'hybrid_train': 'SubnetModel',
}
ALGO_SCHEDULERS = {
    'amba': 'AmbaLevelPruneScheduler', 'ampere': 'AmpereScheduler',
    'block': 'BlockSparseScheduler', 'probmask': 'ProbMaskScheduler',
    'str': 'BaseScheduler',
}
# Channel metric named by a pruning config.
METRICS = {'cdp': 'cdp', 'l1': 'l1', 'taylor': 'taylor',
           'fmrecon': 'fm_reconstruction'}
CHECKPOINT = re.compile(r'^work_dirs/(?P<config>[^/]+)/epoch_(?P<epoch>\d+)'
                        r'\.pth$')


def _rel(path):
    return os.path.relpath(path, ROOT)


@pytest.fixture(autouse=True, scope='module')
def _scope():
    from mmrazor_ext.registry import register_all_modules
    register_all_modules()
    with DefaultScope.overwrite_default_scope('mmrazor_ext'):
        yield


def test_there_are_configs():
    assert len(TOP_CONFIGS) >= 7


def _architecture(cfg):
    return cfg.model.get('architecture', cfg.model)


@pytest.mark.parametrize('path', TOP_CONFIGS, ids=_rel)
def test_config_name_matches_content(path):
    name = NAME.match(os.path.basename(path))
    assert name, f'{_rel(path)}: not {{algo}}_{{model}}_{{gpus}}xb' \
        '{batch}_{data}.py'
    algo, model = name['algo'], name['model']
    cfg = Config.fromfile(path)
    assert cfg.default_scope == 'mmrazor_ext'
    loader = cfg.train_dataloader
    assert loader.batch_size == int(name['batch'])
    assert loader.dataset.type.split('.')[-1] == DATASETS[name['data']]
    if 'auto_scale_lr' in cfg:
        assert cfg.auto_scale_lr.base_batch_size == \
            int(name['gpus']) * int(name['batch'])
    depth = re.fullmatch(r'resnet(\d+)', model)
    if depth:
        assert _architecture(cfg).backbone.depth == int(depth[1])
    if algo in ALGO_SCHEDULERS:
        hooks = [h for h in cfg.custom_hooks if h.type == 'SparsityHook']
        assert len(hooks) == 1
        assert hooks[0].sparsity_config.scheduler.type == \
            ALGO_SCHEDULERS[algo]
    elif algo is not None and algo.startswith('recipe_'):
        assert cfg.model.type == 'CompressionRecipe'
    else:
        assert algo in ALGO_MODELS, f'unknown algorithm {algo!r}'
        assert cfg.model.type == ALGO_MODELS[algo]
    metric = METRICS.get(algo.removeprefix('iter_') if algo else None)
    if metric is not None:
        got = cfg.model.metric
        assert (got if isinstance(got, str) else got.type) == metric


def test_init_checkpoints_name_their_baseline():
    """``work_dirs/<config>/epoch_<n>.pth`` is the last checkpoint of that
    config when it is one of ours."""
    by_name = {os.path.basename(p)[:-3]: p for p in TOP_CONFIGS}
    checked = 0
    for path in TOP_CONFIGS:
        ckpt = Config.fromfile(path).get('init_checkpoint')
        match = CHECKPOINT.match(ckpt or '')
        if match and match['config'] in by_name:
            trained = Config.fromfile(by_name[match['config']])
            assert trained.train_cfg.max_epochs == int(match['epoch']), \
                _rel(path)
            checked += 1
    assert checked >= 20


@pytest.mark.parametrize('path', BASE_CONFIGS, ids=_rel)
def test_base_config_loads(path):
    from mmrazor_ext.registry import MODELS
    cfg = Config.fromfile(path)
    assert cfg.keys(), _rel(path)
    if f'{os.sep}models{os.sep}' in path:
        assert isinstance(MODELS.build(cfg.model), torch.nn.Module)


def test_cifar_resnets_differ_by_depth_only():
    base = Config.fromfile(os.path.join(
        ROOT, 'configs/_base_/models/resnet_cifar.py')).model.to_dict()
    for depth in (20, 32, 44, 56, 110, 1202):
        model = Config.fromfile(os.path.join(
            ROOT, f'configs/_base_/models/resnet{depth}_cifar.py')).model
        model.backbone.depth = base['backbone']['depth']
        assert model.to_dict() == base, depth


def _make_subnet(cfg, model_cfg, shape, tmp_path) -> str:
    """A 50 %-uniform subnet JSON of the config's architecture (subnet
    configs point at search outputs under work_dirs/)."""
    from mmrazor_ext.pruners import ChannelPruner
    from mmrazor_ext.registry import MODELS
    arch = dict(model_cfg['architecture'])
    if 'data_preprocessor' in cfg and 'data_preprocessor' not in arch:
        arch['data_preprocessor'] = cfg.data_preprocessor
    pruner = ChannelPruner(MODELS.build(arch).eval(), torch.randn(shape))
    pruner.set_subnet(pruner.sample_subnet_uniform(0.5))
    return pruner.save_subnet(str(tmp_path / 'subnet.json'), weights=False)


@pytest.mark.parametrize('path', TOP_CONFIGS, ids=_rel)
def test_config_model_forward(path, tmp_path):
    from mmrazor_ext.registry import MODELS
    cfg = Config.fromfile(path)
    assert cfg.default_scope == 'mmrazor_ext'
    model_cfg = cfg.model.copy()
    if 'init_checkpoint' in model_cfg:
        # Algorithm configs point at trained baselines under work_dirs/.
        model_cfg['init_checkpoint'] = None
    if 'data_preprocessor' in cfg and 'data_preprocessor' not in model_cfg:
        model_cfg['data_preprocessor'] = cfg.data_preprocessor
    dataset_type = cfg.train_dataloader.dataset.type
    size = SIZES.get(dataset_type.split('.')[-1], 32)
    channels = len(cfg.get('data_preprocessor', {}).get('mean', [0, 0, 0]))
    if model_cfg.get('type') == 'SubnetModel':
        model_cfg['subnet'] = _make_subnet(cfg, model_cfg,
                                           (1, channels, size, size),
                                           tmp_path)
    model = MODELS.build(model_cfg)
    model.eval()
    x = torch.randn(2, channels, size, size)
    with torch.no_grad():
        out = model(x, mode='tensor')
    leaves = [t for t in torch.utils._pytree.tree_leaves(out)
              if isinstance(t, torch.Tensor)]
    assert leaves, 'forward returned no tensor'
    assert all(torch.isfinite(t).all() for t in leaves)
    if not isinstance(out, (tuple, list, dict)):
        assert out.shape[0] == 2


@pytest.mark.parametrize('text, value', [
    ('3', 3), ('0.5', 0.5), ('1e-3', 1e-3), ('True', True), ('false', False),
    ('None', None), ('data/fashion_mnist', 'data/fashion_mnist'),
    ('(1,2,2,2)', (1, 2, 2, 2)), ('[0.5, 0.35]', [0.5, 0.35]),
    ('1,2', [1, 2]), ("'[(1, a), [b]]'", [(1, 'a'), ['b']]), ('[]', []),
])
def test_cfg_options_values(text, value):
    """``--cfg-options`` of the tools read values as tools/train.py does."""
    from mmrazor_ext.utils.config import parse_cfg_options, parse_cfg_value
    assert parse_cfg_value(text) == value
    assert type(parse_cfg_value(text)) is type(value)
    assert parse_cfg_options([f'a.b={text}']) == {'a.b': value}


def test_cfg_options_merge_into_a_config():
    from mmrazor_ext.utils.config import parse_cfg_options
    cfg = Config.fromfile(os.path.join(
        ROOT, 'configs/baselines/resnet20_1xb128_fashionmnist.py'))
    cfg.merge_from_dict(parse_cfg_options([
        'model.backbone.depth=56', 'train_dataloader.dataset.data_root=/d',
        'param_scheduler.end=1']))
    assert cfg.model.backbone.depth == 56
    assert cfg.train_dataloader.dataset.data_root == '/d'
    assert cfg.param_scheduler.end == 1
    with pytest.raises(ValueError, match='KEY=VALUE'):
        parse_cfg_options(['model.backbone.depth'])
    with pytest.raises(ValueError, match='unbalanced'):
        parse_cfg_options(['a=[1,(2]'])
