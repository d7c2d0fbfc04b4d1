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

``network`` is Knight's "配置模型对应的稀疏层" (the layers to sparsify): its
entries name weights (``<layer>.weight``, or just the layer), and exactly
the listed layers' own weights get masks (CustomPruner: whole tiles of 32
input channels x 64 filters of that weight; Pruner2to4: 2 of every 4
consecutive input-channel weights); no other layer changes. Unlike pruning
there is no input / output question: no channel is removed. A listed entry
that is not a conv / linear weight of the traced forward, or that the
method cannot sparsify (kernel > 8, grouped conv, no full 32x64 tile, shape
not 2:4-eligible), is a ``SparsityConfigError`` naming the entry and the
reason, before the model is touched. An empty or absent list (an addition;
Knight requires one) sparsifies every eligible layer.

Usage mirrors Knight: ``MCSparsity.sparse_model(dict(model_fn=model,
optimizer=optimizer, config_file='sparsity_config.yaml'))``, then the
ordinary training loop (each ``optimizer.step()`` keeps the masks applied).
"""
from collections.abc import Mapping
from typing import Any

from torch import nn

from mmrazor_ext.engine.checkpoint import safe_load
from mmrazor_ext.sparsity import SparsityConfigError, build_sparse_scheduler
from mmrazor_ext.sparsity.base_scheduler import discover_layers
from mmrazor_ext.sparsity.config import coerce_value, read_yaml_mapping
from mmrazor_ext.sparsity.sparse_modules import SPARSIFIABLE, iter_sparse_layers
from mmrazor_ext.utils.io import atomic_torch_save

__all__ = ['MCSparsity', 'load_config']

_SECTIONS = {'app_args': dict, 'asp_cfg': dict, 'network': (dict, type(None))}
_APP_ARGS = {'arch': str, 'dataset': str, 'device': (int, str)}
_ASP_CFG = {'sparsity_method': str, 'target_sparsity': (float, int)}


def _check(d: dict, schema: dict, where: str) -> None:
    """Check ``d`` in place; YAML text such as ``None`` or ``'0.5'`` is
    converted to the type the schema wants first."""
    for key, value in list(d.items()):
        if key not in schema:
            raise SparsityConfigError(
                f'{where}{key}: unknown key; allowed keys: {", ".join(schema)}')
        types = schema[key] if isinstance(schema[key], tuple) \
            else (schema[key],)
        value = d[key] = coerce_value(value, types)
        if not isinstance(value, types) or isinstance(value, bool):
            raise SparsityConfigError(
                f'{where}{key}: wrong type {type(value).__name__}')


def load_config(config_file: str | Mapping) -> dict:
    """Read and validate a Knight sparsity YAML (or an equivalent dict).

    Returns:
        The parsed dict.

    Raises:
        SparsityConfigError: naming the offending field.
    """
    if isinstance(config_file, Mapping):
        cfg = dict(config_file)
    else:
        # a tab in the indentation is an error naming its line
        cfg = read_yaml_mapping(config_file, where='config_file')
    if not isinstance(cfg, dict):
        raise SparsityConfigError('config_file: the YAML must be a mapping of '
                                  f'sections {", ".join(_SECTIONS)}')
    _check(cfg, _SECTIONS, '')
    # copies: conversions must not change the caller's dict
    cfg['app_args'] = dict(cfg.get('app_args') or {})
    _check(cfg['app_args'], _APP_ARGS, 'app_args.')
    asp = cfg['asp_cfg'] = dict(cfg.get('asp_cfg') or {})
    _check(asp, _ASP_CFG, 'asp_cfg.')
    if 'target_sparsity' not in asp:
        raise SparsityConfigError('asp_cfg.target_sparsity: required')
    network = cfg.get('network') or {}
    arch = (cfg.get('app_args') or {}).get('arch')
    if network and arch is not None and arch not in network:
        raise SparsityConfigError(
            f'network: no entry for app_args.arch {arch!r} '
            f'(has {", ".join(network)})')
    for key, names in network.items():
        if names is not None and (not isinstance(names, (list, tuple)) or
                                  not all(isinstance(n, str) for n in names)):
            raise SparsityConfigError(
                f'network.{key}: must be a list of weight names such as '
                'layer1.0.conv2.weight')
    return cfg


def _sparsity_config(method: str, target: float, layers: list) -> dict:
    return dict(scheduler=dict(type='BlockSparseScheduler', kwargs=dict(
        sparsity_method=method, target_sparsity=float(target),
        only_layer=list(layers))))


def _listed_layers(model: nn.Module, entries: list, where: str) -> list:
    """Layer names of the ``network`` entries (``<layer>.weight``)."""
    modules = dict(model.named_modules())
    layers = []
    for entry in entries:
        name = entry
        if entry.endswith('.weight'):
            name = entry[:-len('.weight')]
        elif entry not in modules and '.' in entry and \
                entry.rsplit('.', 1)[0] in modules:
            raise SparsityConfigError(
                f'{where}: {entry!r}: only weights are sparsified; name '
                f"the layer's weight ({entry.rsplit('.', 1)[0]}.weight)")
        if name not in modules:
            raise SparsityConfigError(f'{where}: {entry!r} is not in the '
                                      'model')
        if not isinstance(modules[name], SPARSIFIABLE):
            raise SparsityConfigError(
                f'{where}: {entry!r} is a {type(modules[name]).__name__}; '
                'only conv / linear weights are sparsified')
        if name in layers:
            raise SparsityConfigError(f'{where}: {entry!r} is listed twice')
        layers.append(name)
    return layers


def _check_sparsifiable(model: nn.Module, sched, layers: list,
                        where: str) -> None:
    """Every listed layer is called by the forward and suits the method."""
    called = set(discover_layers(model, sched.leaf_module))
    for name in layers:
        if name not in called:
            raise SparsityConfigError(
                f'{where}: {name}.weight: the layer is not called by the '
                "model's traced forward")
        reason = sched.layer_filter(name, model.get_submodule(name))
        if reason:
            raise SparsityConfigError(
                f'{where}: {name}.weight cannot be sparsified with '
                f'{sched.cfg["sparsity_method"]}: {reason}; remove it from '
                'the list')


class MCSparsity:
    """``sparse_model`` / ``save_sparse_model`` / ``load_sparse_model``."""

    @staticmethod
    def sparse_model(need_args: dict) -> nn.Module:
        """Sparsify ``need_args['model_fn']`` in place (load the pretrained
        weights first) and keep its masks through ``optimizer.step()``.

        Args:
            need_args: ``model_fn`` (the model), ``optimizer`` (optional) and
                ``config_file`` (the YAML above, or an equivalent dict).

        Returns:
            The same model, with fake-sparse masks on exactly the listed
            layers (every eligible layer without a list).

        Raises:
            SparsityConfigError: A bad field, or a ``network`` entry that
                cannot be sparsified (the message names it and why).
        """
        for key in need_args:
            if key not in ('model_fn', 'optimizer', 'config_file'):
                raise SparsityConfigError(f'need_args.{key}: unknown key')
        model = need_args['model_fn']
        cfg = load_config(need_args['config_file'])
        asp = cfg['asp_cfg']
        network = cfg.get('network') or {}
        arch = (cfg.get('app_args') or {}).get('arch')
        if arch is None and network:
            arch = next(iter(network))
        where = f'network.{arch}'
        layers = _listed_layers(model, list(network.get(arch) or []), where)
        sched = build_sparse_scheduler(_sparsity_config(
            asp.get('sparsity_method', 'CustomPruner'), asp['target_sparsity'],
            layers))
        if layers:
            _check_sparsifiable(model, sched, layers, where)
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

        The file is the weights file of the package's one saved format
        (:mod:`mmrazor_ext.pruners.pruned_model`): ``state_dict`` and
        ``meta``, here with the ``mc_sparsity`` entry in place of a pruned
        structure (sparsity removes no channel); written atomically.

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
                'meta': {'algorithm': 'MCSparsity'},
                'mc_sparsity': {
                    'sparsity_method': sched.cfg['sparsity_method'],
                    'target_sparsity': float(sched.cfg['target_sparsity']),
                    'layers': list(sched.layers),
                    'global_sparsity': sched.global_sparsity()}}
        if extras:
            ckpt.update(extras)
        atomic_torch_save(save_name, ckpt)
        return save_name

    @staticmethod
    def load_sparse_model(model: nn.Module, weight_file: str) -> nn.Module:
        """Load a file written by :meth:`save_sparse_model` into ``model`` (a
        plain model is given the same fake-sparse layers first; loaded with
        the safe loader)."""
        ckpt = safe_load(weight_file)
        info = ckpt['mc_sparsity']
        if not any(True for _ in iter_sparse_layers(model)):
            sched = build_sparse_scheduler(_sparsity_config(
                info['sparsity_method'], info['target_sparsity'], info['layers']))
            sched.prepare_sparse_model(model, init_masks=False)
            # the masks come from the file: no first-update computation
            sched.load_state_dict(dict(sched.state_dict(), masks_ready=True))
            model.__dict__['_mc_sparsity'] = sched
        model.load_state_dict(ckpt['state_dict'])
        return model
