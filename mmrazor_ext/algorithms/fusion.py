"""Layer pruning ("fusion"): remove the least important residual blocks.

:class:`LayerFusion` wraps an ``architecture`` like the channel-pruning
algorithms and is driven by the same :class:`PruningHook`: before training
it scores every removable block (``block_cka``, ``block_cosine``,
``block_weight_norm`` ... from the ``METRICS`` registry), replaces the
weakest ones by identity until ``target`` is met, optionally prunes channels
of the shallower model (depth first, then width, with the same
:class:`~mmrazor_ext.pruners.ChannelPruner`), and the hook recalibrates BN
and fine-tunes (optionally distilling from a frozen copy of the original,
``distill=dict(weight, temperature)``). After training it writes
``pruned_model.pth``, ``subnet.json`` and ``report.json``; merging blocks into
neighbours is not implemented.

The removed blocks and the channel subnet live in ``_extra_state``, which
PyTorch loads on the root module before its children, so ``--resume``
removes the same blocks before the shallower weights are loaded. The
optimizer, built by the Runner before pruning, keeps the removed blocks'
parameters; they get no gradients and are never updated.
"""
from __future__ import annotations

import copy
import json
import os
import os.path as osp
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from torch import nn

from mmrazor_ext.algorithms.base import ArchitectureAlgorithm
from mmrazor_ext.engine.checkpoint import safe_load
from mmrazor_ext.engine.evaluation import evaluate_top1, to_tensors
from mmrazor_ext.estimators import get_model_complexity
from mmrazor_ext.graph import (
    check_equivalence,
    find_blocks,
    fold_bn,
    remove_blocks,
)
from mmrazor_ext.metrics import BlockFeatureCollector, LayerMetric
from mmrazor_ext.registry import METRICS, MODELS

from .channel_pruning import OneShotPruning, _take, _write_json

__all__ = ['LayerFusion', 'block_flops', 'load_fused_model', 'select_blocks']

_FORMAT = 'mmrazor_ext.fusion'
_TARGET_MODES = ('num_blocks', 'flops')


def block_flops(model: nn.Module, blocks, example_inputs,
                mode: str = 'identity') -> dict[str, int]:
    """MACs saved by removing each block (exact: the removed modules' MACs).

    Args:
        model: The model ``blocks`` was found on.
        blocks: Its :class:`~mmrazor_ext.graph.BlockAnalysis`.
        example_inputs: Inputs for counting.
        mode: ``'keep_shortcut'`` keeps the shortcut modules' MACs.

    Returns:
        ``{block name: MACs removed}``.
    """
    layers = get_model_complexity(model, example_inputs,
                                  per_layer=True)['layers']
    res = {}
    for name, info in blocks.blocks.items():
        keep = set(info.shortcut_modules) if mode == 'keep_shortcut' else set()
        res[name] = sum(v['flops'] for k, v in layers.items()
                        if k.startswith(name + '.') and k not in keep)
    return res


def select_blocks(scores: dict[str, float], candidates: list[str],
                  saved: dict[str, int], total: int, target: dict
                  ) -> list[str]:
    """The weakest candidate blocks to remove for a target.

    Args:
        scores: ``{block: importance}`` (higher = more important; ties are
            broken by name so the choice is deterministic).
        candidates: Blocks that may be removed.
        saved: ``{block: MACs removed with it}`` (:func:`block_flops`).
        total: MACs of the model.
        target: ``dict(mode='num_blocks', num=k)``: the k weakest;
            ``dict(mode='flops', ratio=r)``: weakest first while more than
            ``r * total`` MACs are left, so the result is at or just below
            the target (or every candidate, if that is not enough).

    Returns:
        Block names, weakest first.
    """
    order = sorted(candidates, key=lambda n: (scores.get(n, 0.0), n))
    if target['mode'] == 'num_blocks':
        k = target['num']
        if k > len(order):
            raise ValueError(f'target.num={k} but only {len(order)} '
                             f'removable blocks: {order}')
        return order[:k]
    goal = target['ratio'] * total
    left, chosen = total, []
    for name in order:
        if left <= goal:
            break
        chosen.append(name)
        left -= saved[name]
    return chosen


@MODELS.register_module()
class LayerFusion(ArchitectureAlgorithm):
    """Score residual blocks, remove the weakest, fine-tune, export.

    Args:
        architecture: Model config (or module), e.g. an mmpretrain
            ``ImageClassifier``.
        input_shape: Example input shape for tracing.
        metric: Block metric name or config: ``'block_cka'``,
            ``'block_cosine'`` (features) or ``'block_weight_norm'``.
        metric_batches: Training batches for feature metrics.
        target: ``dict(mode='num_blocks', num=k)`` removes the k weakest
            blocks; ``dict(mode='flops', ratio=r)`` removes weakest blocks
            until at most ``r`` of the FLOPs remain (see :meth:`select`).
        removal_mode: ``'identity'`` (only blocks with identity shortcuts)
            or ``'keep_shortcut'`` (projection blocks may lose their
            residual branch and keep the shortcut).
        channel_pruning: Optional :class:`OneShotPruning` arguments
            (``metric``, ``target``, ``pruner``, ``cdp_by``,
            ``metric_batches``) for a width step on the shallower model; its
            FLOPs target is relative to the shallower model.
        fuse_bn: Fold conv / linear + BN in the exported model.
        distill: ``dict(weight=1.0, temperature=4.0)`` adds, after block
            removal, ``loss_kd = weight * T^2 * KL(teacher || student)`` on
            temperature-softened logits, the teacher being a frozen copy of
            the original (unpruned) architecture (needs an mmpretrain
            classifier head). Not in checkpoints: rebuilt from
            ``init_checkpoint``.
        init_checkpoint: Trained weights of ``architecture`` (safe loader).
        bn_recalib_batches: Training batches for BN recalibration after
            removal (run by :class:`PruningHook`; 0 disables it).
        leaf_modules: Extra leaf modules for the tracer.
        data_preprocessor: Given to the architecture when its config has
            none.
    """

    def __init__(self, architecture: dict | nn.Module,
                 input_shape: Iterable[int] = (1, 3, 32, 32),
                 metric: str | dict = 'block_cka', metric_batches: int = 16,
                 target: dict | None = None,
                 removal_mode: str = 'identity',
                 channel_pruning: dict | None = None,
                 fuse_bn: bool = False,
                 distill: dict | None = None,
                 init_checkpoint: str | None = None,
                 bn_recalib_batches: int = 20,
                 leaf_modules: Iterable[type | str] = (),
                 data_preprocessor: dict | None = None,
                 init_cfg: dict | None = None):
        super().__init__(architecture, init_checkpoint, data_preprocessor,
                         init_cfg)
        self.metric = metric if isinstance(metric, dict) else dict(type=metric)
        cls = METRICS.get(self.metric['type'])
        if cls is None or not issubclass(cls, LayerMetric):
            known = sorted(n for n, c in METRICS.module_dict.items()
                           if issubclass(c, LayerMetric))
            raise KeyError(f"metric: {self.metric['type']!r} is not a block "
                           f'(layer) metric of the METRICS registry; known: '
                           f'{known}')
        self.target = self._check_target(target or dict(mode='num_blocks',
                                                        num=1))
        if removal_mode not in ('identity', 'keep_shortcut'):
            raise ValueError(f"removal_mode must be 'identity' or "
                             f"'keep_shortcut', got {removal_mode!r}")
        self.removal_mode = removal_mode
        self.channel_pruning = dict(channel_pruning) if channel_pruning \
            else None
        self.fuse_bn = bool(fuse_bn)
        self.metric_batches = int(metric_batches)
        self.bn_recalib_batches = int(bn_recalib_batches)
        self.leaf_modules = tuple(leaf_modules)
        self.distill = self._check_distill(distill)
        # A frozen copy of the original, outside the module tree (not in the
        # optimizer or checkpoints).
        self.__dict__['_teacher'] = None
        if self.distill is not None:
            teacher = copy.deepcopy(self.architecture).eval()
            teacher.requires_grad_(False)
            self.__dict__['_teacher'] = teacher
        self.input_shape = tuple(input_shape)
        self.example_inputs = torch.randn(*self.input_shape)
        self.step = 0
        self.removed: list[str] = []
        self.report: dict = {}
        # Not a submodule: it shares ``architecture`` (no duplicate keys).
        self.__dict__['_width'] = None

    # -- config checks ----------------------------------------------------------
    @staticmethod
    def _check_target(target: dict) -> dict:
        target = dict(target)
        mode = target.get('mode', 'num_blocks')
        if mode not in _TARGET_MODES:
            raise ValueError(f'target.mode must be one of {_TARGET_MODES}, '
                             f'got {mode!r}')
        if mode == 'num_blocks':
            num = target.get('num')
            if isinstance(num, bool) or not isinstance(num, int) or num < 0:
                raise ValueError(f'target.num must be an int >= 0, got '
                                 f'{num!r}')
        else:
            ratio = target.get('ratio')
            if not isinstance(ratio, (int, float)) or not 0 < ratio < 1:
                raise ValueError(f'target.ratio must be in (0, 1), got '
                                 f'{ratio!r}')
        target['mode'] = mode
        return target

    @staticmethod
    def _check_distill(distill: dict | None) -> dict | None:
        if distill is None:
            return None
        distill = {'weight': 1.0, 'temperature': 4.0, **distill}
        unknown = set(distill) - {'weight', 'temperature'}
        if unknown:
            raise ValueError(f'distill: unknown keys {sorted(unknown)}')
        for key in ('weight', 'temperature'):
            if not isinstance(distill[key], (int, float)) or \
                    distill[key] <= 0:
                raise ValueError(f'distill.{key} must be > 0, got '
                                 f'{distill[key]!r}')
        return distill

    # -- mmengine model API -----------------------------------------------------
    def forward(self, inputs, data_samples=None, mode: str = 'tensor'):
        if mode == 'loss' and self._teacher is not None and self.step > 0:
            return self._distill_loss(inputs, data_samples)
        return self.architecture(inputs, data_samples, mode)

    def _distill_loss(self, inputs, data_samples) -> dict:
        head = getattr(self.architecture, 'head', None)
        if not hasattr(head, '_get_loss'):
            raise TypeError('distill needs an mmpretrain classifier (an '
                            "architecture.head with '_get_loss')")
        logits = self.architecture(inputs, mode='tensor')
        losses = head._get_loss(logits, data_samples)
        teacher = self._teacher.to(inputs.device).eval()
        with torch.no_grad():
            target = teacher(inputs, mode='tensor')
        t = float(self.distill['temperature'])
        kd = F.kl_div(F.log_softmax(logits / t, dim=1),
                      F.log_softmax(target / t, dim=1), log_target=True,
                      reduction='batchmean') * t * t
        losses['loss_kd'] = self.distill['weight'] * kd
        return losses

    @property
    def num_steps(self) -> int:
        return 1

    def get_extra_state(self) -> dict:
        width = self._width
        subnet = (width.pruner.subnet or {}) if width is not None else {}
        # Plain containers and tensors only: loads with weights_only=True.
        return {'step': self.step, 'removed': list(self.removed),
                'channel_subnet': {k: v.clone() for k, v in subnet.items()},
                'report': json.loads(json.dumps(self.report))}

    def set_extra_state(self, state: dict) -> None:
        self.step = int(state.get('step', 0))
        self.report = dict(state.get('report') or {})
        removed = list(state.get('removed') or [])
        if removed and not self.removed:
            self._remove(removed)
        elif removed != self.removed:
            raise RuntimeError(f'checkpoint removed blocks {removed}, but '
                               f'this model already removed {self.removed}')
        subnet = state.get('channel_subnet') or {}
        if subnet:
            self._build_width().pruner.set_subnet(subnet)

    # -- pruning -----------------------------------------------------------------
    def blocks(self):
        """:class:`~mmrazor_ext.graph.BlockAnalysis` of the architecture."""
        return find_blocks(self.architecture, self.example_inputs,
                           self.leaf_modules)

    def candidates(self, blocks) -> list[str]:
        """Blocks that ``removal_mode`` may remove."""
        if self.removal_mode == 'identity':
            return blocks.removable
        return [n for n, b in blocks.blocks.items()
                if b.removable or b.can_keep_shortcut]

    def score(self, batches: Iterable, blocks) -> dict[str, float]:
        """Block scores (higher = more important) from ``metric``."""
        cfg = dict(self.metric)
        metric = METRICS.get(cfg.pop('type'))(**cfg)
        contents = None
        if metric.requires_features:
            col = BlockFeatureCollector(blocks)
            for batch in _take(batches, self.metric_batches):
                col.update(to_tensors(self, batch)[0])
            contents = col.statistics()
        return metric(blocks, self.architecture, contents)

    def select(self, scores: dict[str, float], candidates: list[str],
               saved: dict[str, int], total: int) -> list[str]:
        """Weakest candidates to remove for ``target``
        (see :func:`select_blocks`)."""
        return select_blocks(scores, candidates, saved, total, self.target)

    def _remove(self, names: list[str], blocks=None) -> None:
        blocks = blocks or self.blocks()
        remove_blocks(self.architecture, names, blocks,
                      mode=self.removal_mode, inplace=True)
        self.removed = list(names)

    def _build_width(self) -> OneShotPruning:
        if self.channel_pruning is None:
            raise RuntimeError('no channel_pruning configured')
        cfg = dict(self.channel_pruning)
        cfg.setdefault('pruner', {})
        cfg['pruner'] = dict(cfg['pruner'],
                             leaf_modules=self.leaf_modules)
        width = OneShotPruning(self.architecture,
                               input_shape=self.input_shape,
                               bn_recalib_batches=0, **cfg)
        self.__dict__['_width'] = width
        return width

    def prune(self, batches: Iterable, step: int = 1) -> list[str]:
        """Remove the weakest blocks (then prune channels if configured).

        Returns:
            Names of the removed blocks.
        """
        cfg = dict(self.metric)
        need = self.metric_batches if METRICS.get(
            cfg['type']).requires_features else 0
        if self.channel_pruning is not None:  # the width step's metric data
            need = max(need, int(self.channel_pruning.get('metric_batches',
                                                          16)))
        batches = list(_take(batches, need))
        blocks = self.blocks()
        cands = self.candidates(blocks)
        scores = self.score(batches, blocks)
        saved = block_flops(self.architecture, blocks, self.example_inputs,
                            self.removal_mode)
        total = self.complexity()['flops']
        chosen = self.select(scores, cands, saved, total)
        self._remove(chosen, blocks)
        depth = self.complexity()
        self.step = step
        self.report.update(
            removal_mode=self.removal_mode,
            block_scores={n: _finite(s) for n, s in scores.items()},
            removable_blocks=cands,
            non_removable={n: b.reason for n, b in blocks.blocks.items()
                           if n not in cands},
            removed_blocks=chosen,
            flops_after_depth=depth['flops'])
        print_log(f'layer pruning: metric {self.metric["type"]}, removed '
                  f'{len(chosen)}/{len(cands)} removable blocks {chosen}; '
                  f'FLOPs {total / 1e6:.2f} M -> {depth["flops"] / 1e6:.2f} M',
                  logger='current')
        if self.channel_pruning is not None:
            width = self._build_width()
            width.prune(batches, 1)
            self.report['channel_target'] = width.target
        return chosen

    def complexity(self, model: nn.Module | None = None) -> dict:
        model = model if model is not None else self.architecture
        return get_model_complexity(model, (self.example_inputs,),
                                    leaf_modules=self.leaf_modules)

    def export_model(self) -> nn.Module:
        """The deployable model: removed blocks, sliced channels, folded BN
        if ``fuse_bn`` (a deep copy; the algorithm is unchanged)."""
        if self._width is not None:
            small = self._width.pruner.export()
        else:
            small = copy.deepcopy(self.architecture)
        if self.fuse_bn:
            small = fold_bn(small, (self.example_inputs,),
                            self.leaf_modules, inplace=True)
        return small

    def export(self, work_dir: str, val_batches: Iterable | None = None
               ) -> dict:
        """Write ``pruned_model.pth``, ``subnet.json``, ``report.json``."""
        os.makedirs(work_dir, exist_ok=True)
        small = self.export_model()
        gen = torch.Generator().manual_seed(0)
        check = check_equivalence(
            self.architecture, small,
            (torch.randn(self.example_inputs.shape, generator=gen),))
        subnet = {'format': _FORMAT, 'version': 1,
                  'input_shape': list(self.input_shape),
                  'removal_mode': self.removal_mode,
                  'removed_blocks': list(self.removed),
                  'bn_folded': self.fuse_bn,
                  'channel_subnet': None}
        if self._width is not None:
            path = osp.join(work_dir, 'channel_subnet.json')
            self._width.pruner.save_subnet(path, weights=False)
            subnet['channel_subnet'] = osp.basename(path)
        subnet_path = osp.join(work_dir, 'subnet.json')
        _write_json(subnet_path, subnet)
        ckpt = osp.join(work_dir, 'pruned_model.pth')
        tmp = ckpt + '.tmp'
        torch.save({'state_dict': small.state_dict(),
                    'meta': {'subnet': 'subnet.json',
                             'algorithm': type(self).__name__}}, tmp)
        os.replace(tmp, ckpt)
        after = self.complexity(small)
        report = dict(self.report)
        report.update(
            flops_after=after['flops'], params_after=after['params'],
            flops_ratio=after['flops'] / max(report.get('flops_before', 1), 1),
            export_check=check, pruned_model=ckpt, subnet=subnet_path)
        if val_batches is not None:
            report['top1_after'] = evaluate_top1(small, val_batches)
        _write_json(osp.join(work_dir, 'report.json'), report)
        self.report = report
        print_log(f"exported: removed {len(self.removed)} blocks, FLOPs "
                  f"{report.get('flops_before', 0) / 1e6:.2f} M -> "
                  f"{after['flops'] / 1e6:.2f} M; files in {work_dir}",
                  logger='current')
        return report


def load_fused_model(model: nn.Module, subnet_path: str,
                     load_weights: bool = True,
                     leaf_modules: Iterable[type | str] = ()) -> nn.Module:
    """Rebuild a :class:`LayerFusion` export from the original definition.

    Args:
        model: A freshly built model of the original architecture.
        subnet_path: ``subnet.json`` written by :meth:`LayerFusion.export`.
        load_weights: Load ``pruned_model.pth`` from the same directory.
        leaf_modules: Leaf modules used at export time.

    Returns:
        The exported model (shallower, sliced, folded as it was saved).
    """
    from mmrazor_ext.pruners import load_subnet
    with open(subnet_path) as f:
        data = json.load(f)
    if data.get('format') != _FORMAT:
        raise ValueError(f'{subnet_path} is not a LayerFusion subnet '
                         f'({_FORMAT})')
    x = torch.randn(*data['input_shape'])
    small = remove_blocks(model, data['removed_blocks'],
                          example_inputs=x, mode=data['removal_mode'])
    folder = osp.dirname(osp.abspath(subnet_path))
    if data.get('channel_subnet'):
        small = load_subnet(small, osp.join(folder, data['channel_subnet']),
                            example_inputs=(x,), leaf_modules=leaf_modules,
                            load_weights=False)
    if data.get('bn_folded'):
        small = fold_bn(small, (x,), leaf_modules, inplace=True)
    if load_weights:
        state = safe_load(osp.join(folder, 'pruned_model.pth'))['state_dict']
        small.load_state_dict(state)
    return small


def _finite(x: float) -> float | None:
    return None if x != x or x in (float('inf'), float('-inf')) else float(x)
