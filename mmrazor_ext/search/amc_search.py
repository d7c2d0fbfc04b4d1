"""AMC search plumbing used by :func:`~.amc_workflow.run_amc`.

* :func:`parse_amc_cfg` validates Knight's ``amc_cfg`` section (errors name
  the field, e.g. ``amc_cfg.protocol``) and fills defaults.
* :class:`KMCRecorder` keeps the best ``save_top_k`` episodes by reward as
  checkpoints and writes ``kmc-pruning.csv`` (Knight's columns) plus
  ``amc-episodes.csv`` (every episode) after each episode, atomically.
* :func:`save_pruned_checkpoint` / :func:`rebuild_pruned` store a pruned
  model with its structure (space -> kept channel indices) and rebuild it in
  a freshly built original model *in place*: the model's own ``Parameter``
  objects receive the sliced data, so an optimizer created before the call
  keeps optimising the model.
* :class:`LatencyProvider`: measured CPU latency of the exported model
  (``estimators.measure_latency``) and ``op_num`` (compute nodes of its
  traced graph), or an external command template that receives an ONNX
  export (``{onnx}``) and prints a latency in milliseconds.
"""
from __future__ import annotations

import math
import os
import os.path as osp
import re
import shlex
import subprocess
import tempfile
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from mmrazor_ext.estimators import measure_latency
from mmrazor_ext.graph import TensorPath, trace_model
from mmrazor_ext.pruners import ChannelPruner
from mmrazor_ext.pruners.pruned_model import (
    apply_pruned_structure,
    pruned_structure,
    read_pruned_structure,
    save_pruned_model,
)
from mmrazor_ext.pruners.subnet_io import example_inputs_of, load_weights
from mmrazor_ext.utils.tables import atomic_write_csv

from .amc_channels import PRUNING_METHODS
from .amc_rewards import PROTOCOLS
from .ddpg import DDPGConfig

__all__ = ['CSV_COLUMNS', 'KMCRecorder', 'LatencyProvider', 'count_ops',
           'episode_meta', 'parse_amc_cfg', 'rebuild_pruned', 'save_pruned_checkpoint']

CSV_COLUMNS = ('episode', 'ckpt_name', 'ind1', 'ind2', 'infer_time',
               'op_num', 'total_macs', 'normalized_macs', 'normalized_nnz')

_AMC_DEFAULTS = dict(
    agent_algo='DDPG', protocol='mac-constrained', pruning_pattern='channels',
    pruning_method='fm-reconstruction', target_density=0.5,
    n_points_per_fm=10, group_size=1, action_range=[0.05, 0.95],
    ddpg_cfg=None, save_top_k=5, latency_weight=0.0)


def _number(value, where, integer=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            (isinstance(value, float) and math.isnan(value)):
        raise ValueError(f'{where}: must be a number, got {value!r}')
    if integer and float(value) != int(value):
        raise ValueError(f'{where}: must be an integer, got {value!r}')
    return int(value) if integer else float(value)


def _choice(cfg: Mapping[str, Any], key: str, allowed: Collection[str],
            where: str, noun: str = '') -> None:
    """Raise a ValueError naming ``where.key`` unless ``cfg[key]`` is one of
    ``allowed`` (``noun``: what an entry is, for the message)."""
    value = cfg[key]
    if value in allowed:
        return
    if len(allowed) == 1:
        only, = allowed
        raise ValueError(f'{where}.{key}: only {only!r} is supported, got '
                         f'{value!r}')
    raise ValueError(f'{where}.{key}: unknown {noun} {value!r}; choose one '
                     f'of {", ".join(allowed)}')


def parse_amc_cfg(cfg: Mapping[str, Any] | None, where: str = 'amc_cfg'
                  ) -> dict:
    """Validate an ``amc_cfg`` dict and fill defaults.

    Keys (Knight): ``agent_algo`` (``DDPG``), ``protocol``,
    ``pruning_pattern`` (``channels``), ``pruning_method``,
    ``target_density`` (fraction of MACs kept, (0, 1)), ``n_points_per_fm``,
    ``group_size``, ``action_range`` (``[min, max]`` in (0, 1]),
    ``ddpg_cfg``. Additions: ``save_top_k`` (checkpoints kept, default 5),
    ``latency_weight`` (latency term of the reward, default 0).

    Returns:
        A new dict; ``ddpg_cfg`` is a :class:`DDPGConfig`.

    Raises:
        KeyError: Unknown key (named ``amc_cfg.<key>``).
        ValueError: Bad value (named ``amc_cfg.<key>``).
    """
    cfg = dict(cfg or {})
    for key in cfg:
        if key not in _AMC_DEFAULTS:
            raise KeyError(f'{where}.{key}: unknown key; allowed keys: '
                           f'{", ".join(_AMC_DEFAULTS)}')
    res = dict(_AMC_DEFAULTS)
    res.update({k: v for k, v in cfg.items() if v is not None})
    _choice(res, 'agent_algo', ('DDPG',), where)
    _choice(res, 'protocol', PROTOCOLS, where, 'protocol')
    _choice(res, 'pruning_pattern', ('channels',), where)
    _choice(res, 'pruning_method', PRUNING_METHODS, where, 'method')
    td = _number(res['target_density'], f'{where}.target_density')
    if not 0 < td < 1:
        raise ValueError(f'{where}.target_density: must be in (0, 1) (the '
                         f'fraction of MACs kept), got {td}')
    res['target_density'] = td
    ar = res['action_range']
    if not isinstance(ar, (list, tuple)) or len(ar) != 2:
        raise ValueError(f'{where}.action_range: must be [min, max], got '
                         f'{ar!r}')
    lo = _number(ar[0], f'{where}.action_range[0]')
    hi = _number(ar[1], f'{where}.action_range[1]')
    if not (0 < lo <= 1 and 0 < hi <= 1):
        raise ValueError(f'{where}.action_range: values must be in (0, 1], '
                         f'got {list(ar)}')
    if lo > hi:
        raise ValueError(f'{where}.action_range: min {lo} > max {hi}')
    res['action_range'] = [lo, hi]
    for key in ('n_points_per_fm', 'group_size', 'save_top_k'):
        res[key] = _number(res[key], f'{where}.{key}', integer=True)
        if res[key] < 1:
            raise ValueError(f'{where}.{key}: must be >= 1, got {res[key]}')
    res['latency_weight'] = _number(res['latency_weight'],
                                    f'{where}.latency_weight')
    ddpg = res['ddpg_cfg']
    if ddpg is not None and not isinstance(ddpg, Mapping):
        raise ValueError(f'{where}.ddpg_cfg: must be a mapping, got '
                         f'{type(ddpg).__name__}')
    res['ddpg_cfg'] = DDPGConfig.from_dict(ddpg, f'{where}.ddpg_cfg')
    return res


def episode_meta(info: Mapping[str, Any]) -> dict:
    """The numbers of an episode stored in its checkpoint."""
    keys = ('episode', 'reward', 'ind1', 'ind2', 'vloss', 'total_macs',
            'normalized_macs', 'normalized_nnz', 'infer_time', 'op_num',
            'strategy')
    return {k: info.get(k) for k in keys}


# -- checkpoints --------------------------------------------------------------------
def _plain(v):
    if isinstance(v, torch.Tensor):
        return v.tolist()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def save_pruned_checkpoint(path: str, small: nn.Module, pruner: ChannelPruner,
                           subnet: Mapping[str, torch.Tensor],
                           meta: Mapping[str, Any] | None = None,
                           extras: Mapping[str, Any] | None = None) -> str:
    """Save an exported episode model in the one pruned-model format.

    The file is :func:`~mmrazor_ext.pruners.pruned_model.save_pruned_model`'s
    container (``state_dict``, ``subnet`` structure, ``meta``) plus
    ``extras``; plain containers and tensors only, so it loads with
    ``weights_only=True``.
    """
    structure = pruned_structure(pruner, subnet=subnet,
                                 meta={'algorithm': 'AMC', **(meta or {})})
    return save_pruned_model(path, small, structure, extras=extras)


def _transplant(model: nn.Module, small: nn.Module) -> None:
    """Make ``model`` the sliced ``small`` in place, keeping Parameter
    objects (an optimizer built on ``model`` stays attached)."""
    mods = dict(model.named_modules())
    smods = dict(small.named_modules())
    if mods.keys() != smods.keys():
        raise RuntimeError('the pruned model has another module tree than '
                           'the original')
    with torch.no_grad():
        for name, m in mods.items():
            s = smods[name]
            for pname, p in list(m._parameters.items()):
                sp = s._parameters.get(pname)
                if p is None or sp is None:
                    m._parameters[pname] = sp
                    continue
                p.data = sp.data.to(p.device)
                p.grad = None
            for bname, b in list(m._buffers.items()):
                sb = s._buffers.get(bname)
                m._buffers[bname] = None if sb is None else \
                    sb.to(b.device if b is not None else 'cpu')
            for k, v in s.__dict__.items():
                # sliced sizes: in_channels, out_channels, num_features ...
                if not k.startswith('_') and k != 'training' and \
                        not isinstance(v, (nn.Module, torch.Tensor)) and \
                        not callable(v):
                    m.__dict__[k] = v


def rebuild_pruned(model: nn.Module, path: str) -> dict:
    """Rebuild the pruned model saved at ``path`` in ``model`` (in place).

    Args:
        model: A freshly built model of the original (unpruned) definition.
        path: A pruned-model file of any supported version (this format,
            ``subnet.json`` or an older AMC ``kmc_pruning`` checkpoint).

    Returns:
        The saved structure (validated).
    """
    structure, wpath, state = read_pruned_structure(path)
    if structure.get('removal_mode') or structure.get('bn_folded'):
        raise ValueError(f'{path}: the model was made shallower or BN-folded;'
                         ' it cannot be rebuilt in place (use '
                         'mmrazor_ext.pruners.pruned_model.load_pruned_model)')
    ref = next(iter(model.parameters()), None)
    device = ref.device if ref is not None else torch.device('cpu')
    example = tuple(x.to(device) for x in example_inputs_of(structure, path))
    small = apply_pruned_structure(model, structure, example, where=path)
    if state is None and wpath is not None:
        load_weights(small, wpath)
    elif state is not None:
        small.load_state_dict(state)
    _transplant(model, small)
    return structure


# -- latency ------------------------------------------------------------------------
def count_ops(model: nn.Module,
              example_inputs: Sequence[torch.Tensor] | None = None) -> int:
    """Compute nodes (module calls, functions, methods) of the traced graph
    (traced with ``example_inputs`` where torch.fx alone cannot)."""
    gm = trace_model(model, example_inputs=example_inputs)
    return sum(n.op in ('call_module', 'call_function', 'call_method')
               for n in gm.graph.nodes)


class LatencyProvider:
    """Latency (ms) and op count of a model.

    Args:
        example_inputs: Input tensors (their batch size is the one timed).
        cmd: External command template, e.g. ``'mybench --onnx {onnx}'``;
            fields ``{onnx}``, ``{input_shape}`` (``1x3x32x32``) and any key
            of ``fields``. It must print a latency in ms; the last number of
            its standard output is taken. None: measured CPU latency.
        repeats: Timed runs of the built-in measurement (median).
        fields: Extra template fields (Knight ``docker_cfg`` values).
        timeout: Seconds allowed per external command.
        where: Name of the command setting in error messages.
    """

    def __init__(self, example_inputs: Sequence[torch.Tensor],
                 cmd: str | None = None, repeats: int = 10,
                 fields: Mapping[str, Any] | None = None,
                 timeout: float = 600, where: str = 'docker_cfg.latency_cmd'):
        self.example_inputs = tuple(example_inputs)
        self.cmd = cmd
        self.repeats = int(repeats)
        self.fields = dict(fields or {})
        self.timeout = timeout
        self.where = where
        if cmd is not None:
            try:
                cmd.format(onnx='x.onnx', input_shape='1', **self.fields)
            except (KeyError, IndexError, ValueError) as e:
                raise ValueError(f'{where}: bad template {cmd!r} ({e}); '
                                 'fields: {onnx}, {input_shape}'
                                 + ''.join(f', {{{k}}}' for k in self.fields)
                                 ) from None

    def __call__(self, model: nn.Module) -> tuple[float, int]:
        op_num = count_ops(model, self.example_inputs)
        if self.cmd is None:
            sec = measure_latency(model, self.example_inputs, warmup=2,
                                  repeats=self.repeats)
            return 1000.0 * sec, op_num
        return self._external(model), op_num

    def _external(self, model: nn.Module) -> float:
        x = self.example_inputs[0]
        with tempfile.TemporaryDirectory() as d:
            path = osp.join(d, 'model.onnx')
            wrapper = TensorPath(model).eval()
            with torch.no_grad():
                torch.onnx.export(wrapper, (x,), path, dynamo=False,
                                  opset_version=17, input_names=['input'],
                                  output_names=['output'])
            cmd = self.cmd.format(onnx=path, input_shape='x'.join(
                str(s) for s in x.shape), **self.fields)
            proc = subprocess.run(shlex.split(cmd), capture_output=True,
                                  text=True, timeout=self.timeout)
        if proc.returncode != 0:
            raise RuntimeError(f'{self.where}: {cmd!r} exited '
                               f'{proc.returncode}: {proc.stderr[-2000:]}')
        nums = re.findall(r'[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?', proc.stdout)
        if not nums:
            raise RuntimeError(f'{self.where}: {cmd!r} printed no number: '
                               f'{proc.stdout[-500:]!r}')
        return float(nums[-1])


# -- recorder -------------------------------------------------------------------------
def _fmt(v, digits=4):
    if v is None:
        return 'none'
    if isinstance(v, float):
        return f'{v:.{digits}f}'
    return v


class KMCRecorder:
    """Keeps the best ``top_k`` episodes (by reward) as checkpoints.

    Call it as the ``callback`` of
    :func:`~mmrazor_ext.search.amc_workflow.run_amc_search`. After every episode
    it rewrites ``kmc-pruning.csv`` (one row per kept checkpoint, best reward
    first, Knight's columns) and ``amc-episodes.csv`` (every episode, with
    reward and per-decision keep ratios).

    Args:
        output_dir: Where the files go.
        arch: Name prefix of the checkpoints.
        top_k: Checkpoints kept.
        save_fn: ``save_fn(path, info)`` writes one checkpoint (``info``:
            the episode's last ``step`` info, with the exported ``model``).
        ckpt_subdir: Checkpoints go to ``output_dir/ckpt_subdir``;
            ``ckpt_name`` is then that relative path.
    """

    def __init__(self, output_dir: str, arch: str, top_k: int,
                 save_fn: Callable[[str, dict], Any], ckpt_subdir: str = ''):
        self.output_dir = output_dir
        self.arch = arch
        self.top_k = int(top_k)
        self.save_fn = save_fn
        self.ckpt_subdir = ckpt_subdir
        self.episodes: list[dict] = []
        self.kept: list[dict] = []
        os.makedirs(osp.join(output_dir, ckpt_subdir), exist_ok=True)

    @property
    def csv_path(self) -> str:
        return osp.join(self.output_dir, 'kmc-pruning.csv')

    @property
    def best(self) -> dict | None:
        return self.kept[0] if self.kept else None

    def __call__(self, episode: int, info: dict) -> None:
        row = {k: v for k, v in info.items()
               if k not in ('model', 'subnet', 'action', 'keep', 'space')}
        row['episode'] = episode
        row['ckpt_name'] = ''
        self.episodes.append(row)
        worst = self.kept[-1]['reward'] if len(self.kept) >= self.top_k \
            else -math.inf
        if info['reward'] > worst:
            row['ckpt_name'] = osp.join(self.ckpt_subdir,
                                        f'{self.arch}_episode_{episode}.pth')
            self.save_fn(osp.join(self.output_dir, row['ckpt_name']), info)
            self.kept.append(row)
            # stable: equal rewards keep the earlier episode first
            self.kept.sort(key=lambda r: -r['reward'])
            for old in self.kept[self.top_k:]:
                path = osp.join(self.output_dir, old['ckpt_name'])
                if osp.exists(path):
                    os.remove(path)
            self.kept = self.kept[:self.top_k]
        self.write()

    def write(self) -> None:
        """Rewrite ``kmc-pruning.csv`` and ``amc-episodes.csv``."""
        atomic_write_csv(self.csv_path,
                         [[_fmt(r.get(c)) for c in CSV_COLUMNS]
                          for r in self.kept], CSV_COLUMNS)
        cols = ('episode', 'reward', 'ind1', 'ind2', 'vloss', 'total_macs',
                'normalized_macs', 'normalized_nnz', 'infer_time', 'op_num',
                'ckpt_name', 'strategy')
        rows = [[_fmt(r.get(c)) for c in cols[:-1]]
                + [' '.join(f'{a:.4f}' for a in r.get('strategy', []))]
                for r in self.episodes]
        atomic_write_csv(osp.join(self.output_dir, 'amc-episodes.csv'), rows,
                         cols)
