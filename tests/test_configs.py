"""Every config loads, its model builds and runs a forward pass."""
import glob
import os

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

from conftest import ROOT

CONFIGS = sorted(
    p for p in glob.glob(os.path.join(ROOT, 'configs', '**', '*.py'),
                         recursive=True))
TOP_CONFIGS = [p for p in CONFIGS if '_base_' not in p]
# Input size per dataset type; ImageNet nets pool globally, so 64 px is
# enough to exercise them quickly.
SIZES = {'FashionMNIST': 28, 'CIFAR10': 32, 'ImageNet': 64,
         'CocoDetectionTV': 128}


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


@pytest.mark.parametrize('path', CONFIGS, ids=_rel)
def test_config_loads(path):
    cfg = Config.fromfile(path)
    assert isinstance(cfg, Config)


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
