"""A config's (architecture) model, data and example inputs, for tools.

The analysis, visualization and deploy tools
read configs and checkpoints through these, so each of them does it the same
way.
"""
from __future__ import annotations

import argparse

import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.runner import Runner

from mmrazor_ext.utils.config import add_cfg_options_arg, parse_cfg_options

__all__ = ['SIZES', 'add_model_args', 'build_from_args', 'build_from_config',
           'build_loader', 'model_tool_parser']

# Input side per dataset type when a tool is not told ``--shape``.
SIZES = {'FashionMNIST': 28, 'CIFAR10': 32, 'ImageNet': 224}


def build_from_config(config: str, checkpoint: str | None = None,
                      cfg_options: dict | None = None):
    """Return ``(cfg, model, example_inputs)`` for a config.

    For an algorithm config (``model.architecture``) the architecture is
    built; checkpoints of either kind are accepted (``architecture.``
    prefixes are stripped) and loaded with the safe loader, strictly: a
    checkpoint that does not fit is an error listing the mismatches.
    """
    from mmrazor_ext.engine import load_model_state, safe_load
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
        ckpt = safe_load(checkpoint)
        state = ckpt.get('state_dict', ckpt)
        if any(k.startswith('architecture.') for k in state):
            state = {k[len('architecture.'):]: v for k, v in state.items()
                     if k.startswith('architecture.')}
        ckpt = dict(ckpt, state_dict=state) if 'state_dict' in ckpt else state
        load_model_state(model, ckpt, checkpoint, strict=True)
    model.eval()
    dataset = cfg.train_dataloader.dataset.type.split('.')[-1]
    side = SIZES.get(dataset, 32)
    channels = len(cfg.get('data_preprocessor', {}).get('mean', [0, 0, 0]))
    return cfg, model, torch.randn(1, channels, side, side)


def add_model_args(parser: argparse.ArgumentParser
                   ) -> argparse.ArgumentParser:
    """Add the ``config`` and ``checkpoint`` positionals and
    ``--cfg-options`` (read by :func:`build_from_args`)."""
    parser.add_argument('config', help='baseline or algorithm config')
    parser.add_argument('checkpoint', help='trained weights (either kind)')
    return add_cfg_options_arg(parser)


def model_tool_parser(description: str, batch_size: int
                      ) -> argparse.ArgumentParser:
    """The parser of an analysis tool that reads a trained model and writes
    its results to a folder: :func:`add_model_args`' arguments,
    ``--out-dir`` (required) and ``--batch-size`` (default ``batch_size``)."""
    parser = add_model_args(argparse.ArgumentParser(description=description))
    parser.add_argument('--out-dir', required=True)
    parser.add_argument('--batch-size', type=int, default=batch_size)
    return parser


def build_from_args(args: argparse.Namespace):
    """:func:`build_from_config` of the arguments :func:`add_model_args`
    added: ``(cfg, model, example_inputs)``."""
    return build_from_config(args.config, args.checkpoint,
                             parse_cfg_options(args.cfg_options))


def build_loader(cfg: Config, split: str = 'train', batch_size: int = 64,
                 shuffle: bool = False):
    """A dataloader of the config's train or val set (no workers)."""
    loader = cfg[f'{split}_dataloader'].copy()
    loader.update(batch_size=batch_size, num_workers=0,
                  persistent_workers=False,
                  sampler=dict(type='DefaultSampler', shuffle=shuffle))
    with DefaultScope.overwrite_default_scope('mmrazor_ext'):
        return Runner.build_dataloader(loader, seed=0)
