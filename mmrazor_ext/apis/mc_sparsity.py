"""Knight-MC style facade: ``MCSparsity`` (seeds/003, "Sparsity").

The YAML file has the keys of Knight's ``sparsity_template.yaml``::

    app_args:
      arch: resnet50_cifar          # must match the key under network
      dataset: cifar10
      device: 0
    asp_cfg:
      sparsity_method: CustomPruner # or Pruner2to4
      target_sparsity: 0.5
    network:
      resnet50_cifar: [layer1.0.conv2.weight, layer1.1.conv2.weight]

``network`` lists the weights to sparsify (empty or absent: every eligible
layer). Usage mirrors Knight: ``MCSparsity.sparse_model(dict(model_fn=model,
optimizer=optimizer, config_file='sparsity_config.yaml'))``, then the
ordinary training loop (each ``optimizer.step()`` keeps the masks applied).
"""
from typing import Any

import torch
import yaml
from torch import nn

from mmrazor_ext.sparsity import SparsityConfigError, build_sparse_scheduler
from mmrazor_ext.sparsity.sparse_modules import iter_sparse_layers

_SECTIONS = {'app_args': dict, 'asp_cfg': dict, 'network': (dict, type(None))}
_APP_ARGS = {'arch': str, 'dataset': str, 'device': (int, str)}
_ASP_CFG = {'sparsity_method': str, 'target_sparsity': (float, int)}


def _check(d: dict, schema: dict, where: str) -> None:
    for key, value in d.items():
        if key not in schema:
            raise SparsityConfigError(
                f'{where}{key}: unknown key; allowed keys: {", ".join(schema)}')
        if not isinstance(value, schema[key]) or isinstance(value, bool):
            raise SparsityConfigError(
                f'{where}{key}: wrong type {type(value).__name__}')


def load_config(config_file: str) -> dict:
    """Read and validate a Knight sparsity YAML; returns the parsed dict."""
    with open(config_file) as f:
        cfg = yaml.safe_load(f) or {}
    _check(cfg, _SECTIONS, '')
    _check(cfg.get('app_args') or {}, _APP_ARGS, 'app_args.')
    asp = cfg.get('asp_cfg') or {}
    _check(asp, _ASP_CFG, 'asp_cfg.')
    if 'target_sparsity' not in asp:
        raise SparsityConfigError('asp_cfg.target_sparsity: required')
    network = cfg.get('network') or {}
    arch = (cfg.get('app_args') or {}).get('arch')
    if network and arch is not None and arch not in network:
        raise SparsityConfigError(
            f'network: no entry for app_args.arch {arch!r} '
            f'(has {", ".join(network)})')
    return cfg


def _sparsity_config(method: str, target: float, layers: list) -> dict:
    return dict(scheduler=dict(type='BlockSparseScheduler', kwargs=dict(
        sparsity_method=method, target_sparsity=float(target),
        only_layer=list(layers))))


class MCSparsity:
    """``sparse_model`` / ``save_sparse_model`` / ``load_sparse_model``."""

    @staticmethod
    def sparse_model(need_args: dict) -> nn.Module:
        """Sparsify ``need_args['model_fn']`` in place (load the pretrained
        weights first) and keep its masks through ``optimizer.step()``.

        Args:
            need_args: ``model_fn`` (the model), ``optimizer`` (optional) and
                ``config_file`` (the YAML above).

        Returns:
            The same model, with fake-sparse masks.
        """
        for key in need_args:
            if key not in ('model_fn', 'optimizer', 'config_file'):
                raise SparsityConfigError(f'need_args.{key}: unknown key')
        model = need_args['model_fn']
        cfg = load_config(need_args['config_file'])
        asp = cfg['asp_cfg']
        network = cfg.get('network') or {}
        arch = (cfg.get('app_args') or {}).get('arch')
        weights = network.get(arch) if arch else next(iter(network.values()), None)
        layers = [w[:-len('.weight')] if w.endswith('.weight') else w
                  for w in (weights or [])]
        names = {n for n, _ in model.named_modules()}
        missing = [n for n in layers if n not in names]
        if missing:
            raise SparsityConfigError(f'network.{arch}: not in the model: {missing}')
        sched = build_sparse_scheduler(_sparsity_config(
            asp.get('sparsity_method', 'CustomPruner'), asp['target_sparsity'],
            layers))
        sched.prepare_sparse_model(model)
        if need_args.get('optimizer') is not None:
            sched.init_optimizer(need_args['optimizer'], drive=False)
        # Kept on the model so save / load find it (plain attribute, not a
        # submodule: it is no part of the state_dict).
        model.__dict__['_mc_sparsity'] = sched
        return model

    @staticmethod
    def save_sparse_model(model: nn.Module, save_name: str,
                          extras: Any = None) -> str:
        """Save the weights, masks and the sparsity setting.

        Args:
            model: A model returned by :meth:`sparse_model`.
            save_name: Output path.
            extras: Dict of extra information (accuracy, optimizer state ...);
                tensors and plain python values keep the file loadable with
                ``weights_only=True``.
        """
        sched = model.__dict__.get('_mc_sparsity')
        if sched is None:
            raise RuntimeError('model was not sparsified by MCSparsity.sparse_model')
        ckpt = {'state_dict': model.state_dict(),
                'mc_sparsity': {
                    'sparsity_method': sched.cfg['sparsity_method'],
                    'target_sparsity': float(sched.cfg['target_sparsity']),
                    'layers': list(sched.layers),
                    'global_sparsity': sched.global_sparsity()}}
        if extras:
            ckpt.update(extras)
        torch.save(ckpt, save_name)
        return save_name

    @staticmethod
    def load_sparse_model(model: nn.Module, weight_file: str) -> nn.Module:
        """Load a file written by :meth:`save_sparse_model` into ``model`` (a
        plain model is given the same fake-sparse layers first)."""
        ckpt = torch.load(weight_file, map_location='cpu', weights_only=True)
        info = ckpt['mc_sparsity']
        if not any(True for _ in iter_sparse_layers(model)):
            sched = build_sparse_scheduler(_sparsity_config(
                info['sparsity_method'], info['target_sparsity'], info['layers']))
            sched.prepare_sparse_model(model, init_masks=False)
            sched._masks_ready = True  # the masks come from the file
            model.__dict__['_mc_sparsity'] = sched
        model.load_state_dict(ckpt['state_dict'])
        return model
