"""Knight-MC style facade: ``MCPruning`` (seeds/003, "Pruning").

The YAML file has the sections of Knight's ``pruning_template.yaml``::

    app_args:
      arch: resnet20_fmnist        # names the entry under network
      dataset: fashion_mnist
      input_shape: [1, 1, 28, 28]
      device: 0                    # GPU id when CUDA is available, or 'cpu'
      output_dir: ./output
      seed: 0                      # addition: seeds the agent and sampling
      network_channels: input      # addition: input (Knight) | output
    amc_cfg:
      agent_algo: DDPG
      protocol: mac-constrained    # accuracy-guaranteed,
                                   # mac-constrained-experimental, punish-agent
      pruning_pattern: channels
      pruning_method: l1-rank      # stochastic-l1-rank, fm-reconstruction
      target_density: 0.5          # fraction of the MACs kept
      n_points_per_fm: 10
      group_size: 1
      action_range: [0.05, 0.95]
      save_top_k: 5                # addition: checkpoints kept (best reward)
      latency_weight: 0.0          # addition: reward -= w * latency / dense
      ddpg_cfg: {bsize: 64, warmup: 100, num_training_episodes: 300, ...}
    network:
      resnet20_fmnist: [backbone.layer1.0.conv2, ...]   # omitted: all layers
    docker_cfg:
      run_latency: False
      latency_cmd: null            # addition: 'mybench --onnx {onnx}'
      latency_repeats: 10          # addition
      chip: ...                    # Knight keys: accepted, usable as
                                   # {chip} ... fields of latency_cmd

``network`` entries name layers whose **input** channels are pruned, as in
Knight ("KMC注意事项" 1: pruning Conv2's input channels Ci removes the
matching filters of Conv1, the layer that produces them). Only the directly
preceding layer may follow (BN / activation / pooling in between are
fine); a listed layer whose pruning would reach further, because its input
is a residual stream, a concat, or a tensor other layers read too, is a
``ValueError`` naming the listed layer and the layers it would also change
("KMC注意事项" 2). For a torchvision ResNet-50 the seed's list
``[layer1.0.conv2, layer1.0.conv3, ...]`` prunes the filters of
``conv1`` / ``conv2`` of each bottleneck; ``layer1.1.conv1`` (input: the
residual stream) is an error. ``app_args.network_channels: output`` (an
addition) makes entries name layers whose **output** channels are pruned
instead, with every consumer's inputs; layers sharing their output channels
(a residual group) must then all be listed, which is the only way to search
residual streams from a list (without ``network`` every space is searched).
A trailing ``.weight`` on an entry is ignored.

Usage mirrors Knight::

    need_args = {'model_fn': model, 'val_fn': partial(validate, loader=val),
                 'config_file': 'pruning_config.yaml'}
    MCPruning.prune_model(need_args)       # writes output_dir/kmc-pruning.csv
    MCPruning.load_pruned_model(model, weight_file=best)   # in place
    ...fine-tune...
    MCPruning.save_pruned_model(model, 'pruned.pth', {'acc': acc})

``val_fn(model)`` returns ``{'ind1', 'ind2', 'vloss'}`` in percent (vloss
optional). The optional ``need_args['calib_fn'](model)`` runs before every
evaluation (e.g. BN recalibration on training batches: pruned models are
judged far too harshly with stale BN statistics); ``feature_fn(model)``
runs the forward passes whose features fm-reconstruction samples (default:
``val_fn``). The model passed in is given back unchanged.
"""
from __future__ import annotations

import os
import os.path as osp
import time
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from mmrazor_ext.pruners import ChannelPruner
from mmrazor_ext.pruners.pruned_model import (
    save_pruned_model as write_pruned_model,
)
from mmrazor_ext.search.amc_decisions import NetworkList, check_channels
from mmrazor_ext.search.amc_search import (
    LatencyProvider,
    parse_amc_cfg,
    rebuild_pruned,
)
from mmrazor_ext.search.amc_workflow import run_amc
from mmrazor_ext.sparsity.config import coerce_value, read_yaml_mapping

__all__ = ['MCPruning', 'load_pruning_config']

_SECTIONS = ('app_args', 'amc_cfg', 'network', 'docker_cfg')
_APP_ARGS = {'arch': str, 'dataset': str, 'input_shape': (list, tuple),
             'device': (int, str), 'output_dir': str, 'seed': int,
             'network_channels': str}
_DOCKER = {'run_latency': bool, 'chip': str, 'image_path': str,
           'localhost_dir': str, 'container_dir': str, 'workspace_dir': str,
           'container_name': str, 'bit_width': int, 'is_sparse': bool,
           'latency_cmd': (str, type(None)), 'latency_repeats': int}
_NEED_ARGS = ('model_fn', 'val_fn', 'config_file', 'calib_fn', 'feature_fn')


def _check_types(d: dict, schema: dict, where: str) -> None:
    """Check ``d`` in place; YAML text such as ``None`` or ``'10'`` is
    converted to the type the schema wants first."""
    for key, value in list(d.items()):
        if key not in schema:
            raise KeyError(f'{where}.{key}: unknown key; allowed keys: '
                           f'{", ".join(schema)}')
        types = schema[key]
        value = d[key] = coerce_value(
            value, types if isinstance(types, tuple) else (types,))
        ok = isinstance(value, types)
        if isinstance(value, bool) and bool not in (
                types if isinstance(types, tuple) else (types,)):
            ok = False
        if not ok:
            raise ValueError(f'{where}.{key}: wrong type '
                             f'{type(value).__name__} ({value!r})')


def load_pruning_config(config_file: str | Mapping) -> dict:
    """Read and validate a Knight pruning YAML (or an equivalent dict).

    Returns:
        ``{'app_args', 'amc_cfg' (parsed, defaults filled), 'layers'
        (a :class:`~mmrazor_ext.search.amc_decisions.NetworkList` carrying
        ``app_args.network_channels``, or None), 'docker_cfg'}``.

    Raises:
        KeyError / ValueError: naming the offending field.
    """
    if isinstance(config_file, Mapping):
        cfg = dict(config_file)
    else:
        if not osp.isfile(config_file):
            raise FileNotFoundError(f'config_file: {config_file} not found')
        # a tab in the indentation is an error naming its line
        cfg = read_yaml_mapping(config_file, where='config_file')
    if not isinstance(cfg, Mapping):
        raise ValueError('config_file: the YAML must be a mapping of '
                         f'sections {", ".join(_SECTIONS)}')
    for key in cfg:
        if key not in _SECTIONS:
            raise KeyError(f'{key}: unknown section; allowed sections: '
                           f'{", ".join(_SECTIONS)}')
    app = dict(cfg.get('app_args') or {})
    _check_types(app, _APP_ARGS, 'app_args')
    for key in ('arch', 'input_shape'):
        if key not in app:
            raise KeyError(f'app_args.{key}: required')
    shape = app['input_shape']
    if not shape or not all(isinstance(s, int) and not isinstance(s, bool)
                            and s > 0 for s in shape):
        raise ValueError(f'app_args.input_shape: must be a list of positive '
                         f'integers, got {shape!r}')
    app.setdefault('dataset', '')
    app.setdefault('device', 0)
    app.setdefault('output_dir', './output')
    app.setdefault('seed', 0)
    app.setdefault('network_channels', 'input')
    check_channels(app['network_channels'], 'app_args.network_channels')
    amc_raw = cfg.get('amc_cfg') or {}
    if not isinstance(amc_raw, Mapping):
        raise ValueError('amc_cfg: must be a mapping')
    amc = parse_amc_cfg(amc_raw, 'amc_cfg')
    if 'seed' not in (amc_raw.get('ddpg_cfg') or {}):
        amc['ddpg_cfg'].seed = int(app['seed'])
    network = cfg.get('network')
    layers = None
    if network:
        if not isinstance(network, Mapping):
            raise ValueError('network: must map app_args.arch to a list of '
                             'layer names')
        if app['arch'] not in network:
            raise KeyError(f"network: no entry for app_args.arch "
                           f"{app['arch']!r} (has {', '.join(network)})")
        layers = network[app['arch']]
        if layers is not None:
            if not isinstance(layers, (list, tuple)) or not all(
                    isinstance(n, str) for n in layers):
                raise ValueError(f"network.{app['arch']}: must be a list of "
                                 'layer names')
            layers = NetworkList(
                (n[:-len('.weight')] if n.endswith('.weight') else n
                 for n in layers), app['network_channels'])
    docker = dict(cfg.get('docker_cfg') or {})
    _check_types(docker, _DOCKER, 'docker_cfg')
    docker.setdefault('run_latency', False)
    docker.setdefault('latency_cmd', None)
    docker.setdefault('latency_repeats', 10)
    if docker['latency_repeats'] < 1:
        raise ValueError('docker_cfg.latency_repeats: must be >= 1')
    return {'app_args': app, 'amc_cfg': amc, 'layers': layers,
            'docker_cfg': docker}


def _device(model: nn.Module, device) -> torch.device:
    if isinstance(device, int) and device >= 0 and torch.cuda.is_available():
        dev = torch.device('cuda', device)
        model.to(dev)
        return dev
    if isinstance(device, str) and device != 'cpu':
        dev = torch.device(device)
        model.to(dev)
        return dev
    ref = next(iter(model.parameters()), None)
    return ref.device if ref is not None else torch.device('cpu')


class MCPruning:
    """``prune_model`` / ``load_pruned_model`` / ``save_pruned_model``."""

    @staticmethod
    def prune_model(need_args: Mapping[str, Any]) -> dict:
        """Search per-layer keep ratios with AMC (DDPG) and save the best.

        Args:
            need_args: ``model_fn`` (the trained model, or a function
                returning it), ``val_fn`` (``val_fn(model) -> {'ind1',
                'ind2', 'vloss'}``, percent), ``config_file`` (YAML path or
                dict); optional ``calib_fn(model)`` (before every
                evaluation) and ``feature_fn(model)`` (data for
                fm-reconstruction).

        Returns:
            Summary: dense metrics, best episode, csv and checkpoint paths,
            seconds, episodes per minute (also in
            ``output_dir/amc-summary.json``).
        """
        if not isinstance(need_args, Mapping):
            raise TypeError('need_args must be a dict with model_fn, val_fn '
                            'and config_file')
        for key in need_args:
            if key not in _NEED_ARGS:
                raise KeyError(f'need_args.{key}: unknown key; allowed: '
                               f'{", ".join(_NEED_ARGS)}')
        for key in ('model_fn', 'val_fn', 'config_file'):
            if need_args.get(key) is None:
                raise KeyError(f'need_args.{key}: required')
        for key in ('val_fn', 'calib_fn', 'feature_fn'):
            if need_args.get(key) is not None and \
                    not callable(need_args[key]):
                raise TypeError(f'need_args.{key}: must be callable')
        cfg = load_pruning_config(need_args['config_file'])
        model = need_args['model_fn']
        if not isinstance(model, nn.Module):
            model = model()
        if not isinstance(model, nn.Module):
            raise TypeError('need_args.model_fn: must be an nn.Module or '
                            'return one')
        app, amc, docker = cfg['app_args'], cfg['amc_cfg'], cfg['docker_cfg']
        device = _device(model, app['device'])
        out_dir = app['output_dir']
        os.makedirs(out_dir, exist_ok=True)
        example = torch.randn(*app['input_shape'], device=device)
        was_training = model.training
        model.eval()
        t0 = time.perf_counter()
        pruner = ChannelPruner(model, example)
        latency_fn = None
        if docker['run_latency']:
            fields = {k: v for k, v in docker.items()
                      if k not in ('run_latency', 'latency_cmd',
                                   'latency_repeats')}
            latency_fn = LatencyProvider(
                (example,), docker['latency_cmd'], docker['latency_repeats'],
                fields)
        try:
            result = run_amc(
                pruner, amc, need_args['val_fn'], out_dir, app['arch'],
                layers=cfg['layers'], feature_fn=need_args.get('feature_fn'),
                calib_fn=need_args.get('calib_fn'), latency_fn=latency_fn,
                seed=app['seed'], where=f"network.{app['arch']}",
                summary_file='amc-summary.json', t_start=t0)
        finally:
            model.train(was_training)
        return result.summary

    @staticmethod
    def load_pruned_model(model: nn.Module, weight_file: str) -> nn.Module:
        """Rebuild the pruned structure of ``weight_file`` in ``model``.

        ``model`` must be a freshly built model of the original definition;
        its layers are sliced in place (the same ``Parameter`` objects now
        hold the pruned weights, so an optimizer created before this call
        still trains the model, as in Knight's demo) and the saved weights
        are loaded.

        Returns:
            ``model`` (pruned, same object).
        """
        structure = rebuild_pruned(model, weight_file)
        model.__dict__['_pruned_structure'] = structure
        return model

    @staticmethod
    def save_pruned_model(model: nn.Module, save_name: str,
                          extras: Mapping[str, Any] | None = None) -> str:
        """Save a model returned by :meth:`load_pruned_model` (e.g. after
        fine-tuning) so that :meth:`load_pruned_model` can rebuild it.

        Args:
            model: The pruned model.
            save_name: Output path.
            extras: Extra entries (accuracy, optimizer state, latency ...);
                tensors and plain values keep the file loadable with
                ``weights_only=True``.
        """
        structure = model.__dict__.get('_pruned_structure')
        if structure is None:
            raise RuntimeError('save_pruned_model: model was not rebuilt by '
                               'MCPruning.load_pruned_model')
        return write_pruned_model(save_name, model, structure, extras=extras)

