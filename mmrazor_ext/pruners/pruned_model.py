"""The one saved format of a pruned model: ``mmrazor_ext.subnet`` version 2.

A pruned model is saved as its *structure* (what to remove from a freshly
built model of the original definition) plus its weights. Every writer of
this package produces it; :func:`load_pruned_model` reads it and the older
files users may hold. The structure is plain JSON::

    {"format": "mmrazor_ext.subnet", "version": 2,
     "example_inputs": [{"shape": [1, 1, 28, 28], "dtype": "torch.float32"}],
     "ignore_layers": ["head.fc"],
     "removal_mode": "identity",                    # optional depth step:
     "removed_blocks": ["backbone.layer1.1"],       # blocks removed first,
     "merged_blocks": ["backbone.layer2.1"],        # then merged
     "spaces": {"space": {"num_channels": 16,       # width step, on the
                          "kept": [0, 3, ...]}},     # shallower model
     "bn_folded": false,                            # BN folded last
     "meta": {"algorithm": "OneShotPruning"}}

Files: ``subnet.json`` holds the structure and ``"weights":
"pruned_model.pth"`` (relative to it); ``pruned_model.pth`` holds
``{'state_dict': sliced weights, 'subnet': structure, 'meta': ...}`` plus any
extras, so either file alone rebuilds the model (a single ``.pth`` is enough
for episode checkpoints). Both are written atomically and the weights load
with the safe loader (``weights_only=True``).

The channel fields are those of the pruners' subnet file
(:mod:`mmrazor_ext.pruners.subnet_io`, whose ``check_subnet`` validates
every structure read here), so ``pruners.load_subnet`` reads a version 2
file without a depth step. Older files that still load: version 1
``ChannelPruner.save_subnet`` JSON (its weights file a bare state dict),
LayerFusion's ``mmrazor_ext.fusion`` JSON (+ ``channel_subnet.json``,
weights in ``pruned_model.pth`` beside it) and AMC's ``kmc_pruning``
checkpoints.
"""
from __future__ import annotations

import copy
import json
import os.path as osp
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from mmrazor_ext.graph import fold_bn, merge_blocks, remove_blocks
from mmrazor_ext.utils.io import atomic_torch_save, atomic_write_json

from .channel_pruner import ChannelPruner
from .subnet_io import (
    SUBNET_FORMAT,
    check_subnet,
    example_inputs_of,
    kept_masks,
    read_json,
    subnet_record,
    weights_path,
)
from .subnet_io import load_weights as load_weights_file

__all__ = ['FORMAT', 'VERSION', 'apply_pruned_structure', 'load_fused_model',
           'load_pruned_model', 'pruned_structure', 'read_pruned_structure',
           'save_pruned', 'save_pruned_model']

FORMAT = SUBNET_FORMAT
#: version 1 is the pruners' channel-only file
VERSION = 2
_FUSION_FORMAT = 'mmrazor_ext.fusion'      # LayerFusion, before version 2
_KMC_FORMAT = 'mmrazor_ext.kmc_pruning'    # AMC checkpoints, before version 2


# -- structure ------------------------------------------------------------------
def pruned_structure(pruner: ChannelPruner | None = None, *,
                     subnet: Mapping[str, torch.Tensor] | None = None,
                     example_inputs: Sequence[torch.Tensor] | None = None,
                     removal_mode: str | None = None,
                     removed_blocks: Iterable[str] = (),
                     merged_blocks: Iterable[str] = (),
                     bn_folded: bool = False, meta: dict | None = None
                     ) -> dict:
    """A structure in this format.

    Args:
        pruner: Channel pruner of the (shallower) model; None: no width
            step. Its example inputs, ignored layers and kept channels
            (all of them without a subnet) are saved.
        subnet: ``{space: bool mask}`` (default: the pruner's subnet).
        example_inputs: Inputs to describe when there is no pruner.
        removal_mode: How blocks were removed (``'identity'`` or
            ``'keep_shortcut'``); None: no depth step.
        removed_blocks: Blocks removed (depth step).
        merged_blocks: Blocks merged after the removal.
        bn_folded: BN was folded into convs after pruning.
        meta: Plain values kept with the structure (algorithm, episode ...).
    """
    if pruner is not None:
        subnet = pruner.subnet if subnet is None else subnet
        if subnet is None:
            subnet = {n: torch.ones(s.num_channels, dtype=torch.bool)
                      for n, s in pruner.channel_spaces.items()}
        data = subnet_record(subnet, pruner.channel_spaces,
                             pruner.example_inputs, pruner.ignore_layers)
    else:
        data = subnet_record({}, {}, example_inputs or (), ())
    data['version'] = VERSION
    if removal_mode is not None:
        data.update(removal_mode=removal_mode,
                    removed_blocks=list(removed_blocks),
                    merged_blocks=list(merged_blocks))
    data['bn_folded'] = bool(bn_folded)
    data['meta'] = json.loads(json.dumps(meta or {}, default=_plain))
    return data


def _plain(v):
    if isinstance(v, torch.Tensor):
        return v.tolist()
    raise TypeError(f'not a plain value: {type(v).__name__}')


# -- writing --------------------------------------------------------------------
def save_pruned_model(path: str, model: nn.Module, structure: dict,
                      subnet_json: str | None = None,
                      extras: Mapping[str, Any] | None = None) -> str:
    """Write a pruned model in this format.

    Args:
        path: The weights file (``pruned_model.pth``).
        model: The exported (physically pruned) model.
        structure: From :func:`pruned_structure`.
        subnet_json: Also write the structure there, pointing at ``path``.
        extras: More entries of the weights file (plain values / tensors).

    Returns:
        ``path``.
    """
    ckpt = {'state_dict': {k: v.detach().cpu()
                           for k, v in model.state_dict().items()},
            'subnet': structure, 'meta': dict(structure.get('meta') or {})}
    for k, v in (extras or {}).items():
        if k in ckpt:
            raise KeyError(f'extras.{k}: reserved key')
        ckpt[k] = v
    atomic_torch_save(path, ckpt)
    if subnet_json is not None:
        rel = osp.relpath(osp.abspath(path),
                          osp.dirname(osp.abspath(subnet_json)))
        atomic_write_json(subnet_json, {**structure, 'weights': rel})
    return path


def save_pruned(algo, work_dir: str, small: nn.Module, structure: dict,
                export_check) -> dict:
    """Write ``pruned_model.pth`` and ``subnet.json`` of an algorithm.

    Returns:
        ``algo``'s report updated with the exported model's FLOPs, params
        and file paths.
    """
    ckpt = osp.join(work_dir, 'pruned_model.pth')
    subnet_path = osp.join(work_dir, 'subnet.json')
    structure = dict(structure, meta={**structure.get('meta', {}),
                                      'algorithm': type(algo).__name__})
    save_pruned_model(ckpt, small, structure, subnet_json=subnet_path)
    after = algo.complexity(small)
    report = dict(algo.report)
    report.update(
        flops_after=after['flops'], params_after=after['params'],
        flops_ratio=after['flops'] / max(report.get('flops_before', 1), 1),
        export_check=export_check, pruned_model=ckpt, subnet=subnet_path)
    return report


# -- reading --------------------------------------------------------------------
def read_pruned_structure(path: str) -> tuple[dict, str | None, dict | None]:
    """Read and validate a saved structure, converting older formats.

    Args:
        path: ``subnet.json`` (any version) or a weights file holding its
            structure (this format or an AMC ``kmc_pruning`` checkpoint).

    Returns:
        ``(structure, weights file or None, state dict or None)``; the
        state dict is returned when ``path`` itself holds it.

    Raises:
        SubnetFileError: A malformed file (naming the field).
    """
    if path.endswith('.json'):
        data = read_json(path)
        if isinstance(data, dict) and data.get('format') == _FUSION_FORMAT:
            data = _from_fusion(data, osp.dirname(osp.abspath(path)))
        data = check_subnet(data, path)
        return data, weights_path(data, path), None
    # imported on use: engine's hooks / loops import the pruners package
    from mmrazor_ext.engine.checkpoint import safe_load
    ckpt = safe_load(path)
    if isinstance(ckpt, Mapping) and isinstance(ckpt.get('subnet'), Mapping):
        return check_subnet(dict(ckpt['subnet']), path), None, \
            ckpt['state_dict']
    info = ckpt.get('kmc_pruning') if isinstance(ckpt, Mapping) else None
    if isinstance(info, Mapping) and info.get('format') == _KMC_FORMAT:
        return check_subnet(_from_kmc(info), path), None, ckpt['state_dict']
    raise ValueError(f'{path}: no pruned structure in this checkpoint')


def _from_fusion(data: dict, folder: str) -> dict:
    """Version 2 structure of a LayerFusion ``subnet.json`` (version 1)."""
    res = {'format': FORMAT, 'version': VERSION,
           'example_inputs': [{'shape': list(data['input_shape']),
                               'dtype': 'torch.float32'}],
           'ignore_layers': [], 'spaces': {},
           'removal_mode': data.get('removal_mode', 'identity'),
           'removed_blocks': list(data.get('removed_blocks') or []),
           'merged_blocks': list(data.get('merged_blocks') or []),
           'bn_folded': bool(data.get('bn_folded')),
           'meta': {'algorithm': 'LayerFusion'}}
    if data.get('channel_subnet'):
        width = read_json(osp.join(folder, data['channel_subnet']))
        res.update(ignore_layers=list(width.get('ignore_layers', ())),
                   spaces=width['spaces'])
    if osp.isfile(osp.join(folder, 'pruned_model.pth')):
        res['weights'] = 'pruned_model.pth'
    return res


def _from_kmc(info: Mapping) -> dict:
    """Version 2 structure of an AMC ``kmc_pruning`` checkpoint entry."""
    return {'format': FORMAT, 'version': VERSION,
            'example_inputs': [{'shape': list(s), 'dtype': 'torch.float32'}
                               for s in info['input_shapes']],
            'ignore_layers': list(info.get('ignore_layers', ())),
            'spaces': dict(info['subnet']), 'bn_folded': False,
            'meta': dict(info.get('meta') or {})}


def apply_pruned_structure(model: nn.Module, structure: dict,
                           example_inputs: Sequence[torch.Tensor]
                           | None = None,
                           leaf_modules: Iterable[type | str] = (),
                           where: str = 'structure') -> nn.Module:
    """The pruned model of ``structure`` (``model`` is not changed).

    Blocks are removed, then merged, then channel spaces sliced, then BN
    folded: the order the algorithms export in.

    Args:
        model: A freshly built model of the original definition.
        structure: A validated structure (:func:`read_pruned_structure`).
        example_inputs: Override the stored example inputs.
        leaf_modules: Leaf modules used when the structure was saved.
        where: Name of the source in error messages.
    """
    x = tuple(example_inputs) if example_inputs is not None \
        else example_inputs_of(structure, where)
    small = model
    if 'removal_mode' in structure:  # a depth step
        small = remove_blocks(model, structure.get('removed_blocks') or [],
                              example_inputs=x,
                              mode=structure['removal_mode'])
        merged = structure.get('merged_blocks')
        if merged:  # merged after removal, as exported
            small = merge_blocks(small, merged, example_inputs=x,
                                 inplace=True, leaf_modules=leaf_modules)
    if structure.get('spaces'):
        pruner = ChannelPruner(small, x,
                               ignore_layers=structure.get('ignore_layers',
                                                           ()),
                               leaf_modules=leaf_modules)
        pruner.set_subnet(kept_masks(structure, pruner.channel_spaces,
                                     where))
        try:
            small = pruner.export()
        finally:
            pruner.clear_subnet()
    elif small is model:
        small = copy.deepcopy(model)
    if structure.get('bn_folded'):
        small = fold_bn(small, x, leaf_modules, inplace=True)
    return small


def load_pruned_model(model: nn.Module, path: str,
                      example_inputs: Sequence[torch.Tensor] | None = None,
                      leaf_modules: Iterable[type | str] = (),
                      load_weights: bool = True) -> nn.Module:
    """Rebuild a saved pruned model from its original definition.

    Args:
        model: A freshly built model of the original (unpruned) definition
            (not changed).
        path: ``subnet.json`` or a weights file of any supported format.
        example_inputs: Override the stored example inputs.
        leaf_modules: Leaf modules used when it was saved.
        load_weights: Load the saved weights (when the files have them).

    Returns:
        The pruned model.
    """
    structure, wpath, state = read_pruned_structure(path)
    small = apply_pruned_structure(model, structure, example_inputs,
                                   leaf_modules, where=path)
    if load_weights and state is not None:
        small.load_state_dict(state)
    elif load_weights and wpath is not None:
        load_weights_file(small, wpath)
    return small


def load_fused_model(model: nn.Module, subnet_path: str,
                     load_weights: bool = True,
                     leaf_modules: Iterable[type | str] = ()) -> nn.Module:
    """Rebuild a :class:`~mmrazor_ext.algorithms.LayerFusion` export (any
    version; :func:`load_pruned_model` with LayerFusion's argument order).

    Args:
        model: A freshly built model of the original definition.
        subnet_path: ``subnet.json`` written by the export.
        load_weights: Load ``pruned_model.pth``.
        leaf_modules: Leaf modules used at export time.

    Returns:
        The exported model (shallower, merged, sliced, folded as saved).
    """
    return load_pruned_model(model, subnet_path, leaf_modules=leaf_modules,
                             load_weights=load_weights)
