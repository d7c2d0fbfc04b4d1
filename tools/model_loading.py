"""Build a config's (architecture) model, data and example inputs.

Shared by the analysis / visualization tools, so each of them reads
configs and checkpoints the same way.
"""
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.runner import Runner

# Input side per dataset type when a tool is not told ``--shape``.
SIZES = {'FashionMNIST': 28, 'CIFAR10': 32, 'ImageNet': 224}


def build_from_config(config: str, checkpoint: str | None = None,
                      cfg_options: dict | None = None):
    """Return ``(cfg, model, example_inputs)`` for a config.

    For an algorithm config (``model.architecture``) the architecture is
    built; checkpoints of either kind are accepted (``architecture.``
    prefixes are stripped) and loaded with the safe loader.
    """
    from mmrazor_ext.engine import safe_load
    from mmrazor_ext.registry import MODELS, register_all_modules
    register_all_modules()
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    model_cfg = cfg.model.get('architecture', cfg.model).copy()
    if 'data_preprocessor' in cfg:
        model_cfg.setdefault('data_preprocessor', cfg.data_preprocessor)
    with DefaultScope.overwrite_default_scope('mmrazor_ext'):
        model = MODELS.build(model_cfg)
    if checkpoint:
        state = safe_load(checkpoint)
        state = state.get('state_dict', state)
        if any(k.startswith('architecture.') for k in state):
            state = {k[len('architecture.'):]: v for k, v in state.items()
                     if k.startswith('architecture.')}
        model.load_state_dict(state)
    model.eval()
    dataset = cfg.train_dataloader.dataset.type.split('.')[-1]
    side = SIZES.get(dataset, 32)
    channels = len(cfg.get('data_preprocessor', {}).get('mean', [0, 0, 0]))
    return cfg, model, torch.randn(1, channels, side, side)


def build_loader(cfg: Config, split: str = 'train', batch_size: int = 64,
                 shuffle: bool = False):
    """A dataloader of the config's train or val set (no workers)."""
    loader = cfg[f'{split}_dataloader'].copy()
    loader.update(batch_size=batch_size, num_workers=0,
                  persistent_workers=False,
                  sampler=dict(type='DefaultSampler', shuffle=shuffle))
    with DefaultScope.overwrite_default_scope('mmrazor_ext'):
        return Runner.build_dataloader(loader, seed=0)
