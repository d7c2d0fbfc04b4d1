"""Layer pruning ("fusion"): remove the least important residual blocks,
optionally merge nearly linear ones into one conv.

:class:`LayerFusion` wraps an ``architecture`` like the channel-pruning
algorithms and is driven by the same :class:`PruningHook`: before training
it scores every removable block (``block_cka``, ``block_cosine``,
``block_weight_norm`` ... from the ``METRICS`` registry), replaces the
weakest ones by identity until ``target`` is met, optionally merges blocks
whose residual branch is nearly linear (``merging=dict(linear_tol, ...)``,
rule in :mod:`mmrazor_ext.graph.merge`), optionally prunes channels of the
shallower model (depth first, then width, with the same
:class:`~mmrazor_ext.pruners.ChannelPruner`), and the hook recalibrates BN
and fine-tunes (optionally distilling from a frozen copy of the original,
``distill=dict(weight, temperature)``). After training it writes
``pruned_model.pth``, ``subnet.json`` and ``report.json``.

Removal and merging are planned together (:func:`plan_fusion`): blocks the
target removes are removed (removal saves all of a block's MACs); merges go
to the remaining blocks with ``merge_error <= linear_tol``, most linear
first. Merging usually *adds* MACs (3x3 o 3x3 -> 5x5: 18 c^2 -> 25 c^2 per
pixel), so with a FLOPs target the plan counts each merge's MAC change and
removes more blocks to compensate (``allow_more_flops=False`` skips merges
that add MACs instead). With a latency target a block's cost is what the
latency table says removing it saves
(:func:`~mmrazor_ext.search.latency_objective.block_latency_savings`).

The removed and merged blocks and the channel subnet live in
``_extra_state``, which PyTorch loads on the root module before its
children, so ``--resume`` removes and merges the same blocks before the
shallower weights are loaded. The optimizer, built by the Runner before
pruning, keeps the removed blocks' parameters (they get no gradients and
are never updated); a merged conv reuses Parameter objects of its block
(:func:`~mmrazor_ext.graph.merge_blocks` with ``inplace=True``), so it is
trained and a resumed optimizer state matches its shapes.
"""
from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from torch import nn

from mmrazor_ext.estimators import get_model_complexity
from mmrazor_ext.graph import (
    MergeMeter,
    check_equivalence,
    find_blocks,
    find_mergeable,
    fold_bn,
    merge_blocks,
    merged_block_module,
    remove_blocks,
)
from mmrazor_ext.metrics import BlockFeatureCollector, LayerMetric
from mmrazor_ext.pruners import ChannelPruner
from mmrazor_ext.pruners.pruned_model import pruned_structure
from mmrazor_ext.registry import METRICS, MODELS
from mmrazor_ext.search.latency_objective import (
    LatencyObjective,
    block_latency_savings,
    block_removal_subnet,
    check_latency_config,
)
from mmrazor_ext.utils.evaluation import to_tensors

from .base import PruningAlgorithm
from .channel_pruning import OneShotPruning

__all__ = ['LayerFusion', 'block_flops', 'merge_flops_delta', 'plan_fusion',
           'select_blocks']

_MERGE_KEYS = ('linear_tol', 'max_blocks', 'allow_more_flops', 'batches')


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


def merge_flops_delta(model: nn.Module, blocks, names: Iterable[str],
                      leaf_modules: Iterable[type | str] = ()
                      ) -> dict[str, int]:
    """MACs added by merging each block (negative: merging saves MACs).

    Counted exactly: the merged module minus the block, both on the block's
    input shape from ``blocks`` (the example inputs it was found with).

    Args:
        model: The model ``blocks`` was found on (not modified).
        blocks: Its :class:`~mmrazor_ext.graph.BlockAnalysis`.
        names: Mergeable blocks.
        leaf_modules: Extra tracer leaf modules.

    Returns:
        ``{block name: merged MACs - block MACs}``.
    """
    res = {}
    for name in names:
        x = torch.zeros(blocks.blocks[name].in_shape)
        merged = merged_block_module(model, blocks, name)
        res[name] = int(
            get_model_complexity(merged, (x,), leaf_modules=leaf_modules)
            ['flops'] - get_model_complexity(model.get_submodule(name), (x,),
                                             leaf_modules=leaf_modules)
            ['flops'])
    return res


def plan_fusion(scores: dict[str, float], candidates: list[str],
                saved: dict[str, int], total: int, target: dict,
                merge: dict | None = None) -> tuple[list[str], list[str]]:
    """Blocks to remove and blocks to merge for a target.

    Args:
        scores: ``{block: importance}`` (higher = more important; ties are
            broken by name so the choice is deterministic).
        candidates: Blocks that may be removed.
        saved: ``{block: MACs removed with it}`` (:func:`block_flops`).
        total: MACs of the model.
        target: ``dict(mode='num_blocks', num=k)``: the k weakest;
            ``dict(mode='flops', ratio=r)``: weakest first while more than
            ``r * total`` MACs are left (merges' MAC changes included), so
            the result is at or just below the target (or every candidate,
            if that is not enough).
        merge: None (no merging) or ``dict(errors={block: merge_error},
            delta={block: MACs added by merging}, linear_tol=t,
            max_blocks=None, allow_more_flops=True)``: blocks not removed
            with ``merge_error <= t`` are merged, lowest error first, at
            most ``max_blocks``; ``allow_more_flops=False`` skips merges
            with ``delta > 0``.

    Returns:
        ``(removed, merged)``: removed weakest first, merged most linear
        first.
    """
    order = sorted(candidates, key=lambda n: (scores.get(n, 0.0), n))

    def merges(removed):
        if not merge:
            return []
        errors, delta = merge['errors'], merge['delta']
        tol, rem = merge['linear_tol'], set(removed)
        ok = sorted((n for n, e in errors.items()
                     if n not in rem and e <= tol and (
                         merge.get('allow_more_flops', True)
                         or delta[n] <= 0)),
                    key=lambda n: (errors[n], n))
        cap = merge.get('max_blocks')
        return ok if cap is None else ok[:cap]

    if target['mode'] == 'num_blocks':
        k = target['num']
        if k > len(order):
            raise ValueError(f'target.num={k} but only {len(order)} '
                             f'removable blocks: {order}')
        return order[:k], merges(order[:k])
    goal = target['ratio'] * total
    for i in range(len(order) + 1):
        removed, merged = order[:i], merges(order[:i])
        left = total - sum(saved[n] for n in removed) + \
            sum(merge['delta'][n] for n in merged)
        if left <= goal:
            break
    return removed, merged


def select_blocks(scores: dict[str, float], candidates: list[str],
                  saved: dict[str, int], total: int, target: dict
                  ) -> list[str]:
    """The weakest candidate blocks to remove for a target (no merging;
    see :func:`plan_fusion` for the arguments).

    Returns:
        Block names, weakest first.
    """
    return plan_fusion(scores, candidates, saved, total, target)[0]


@MODELS.register_module()
class LayerFusion(PruningAlgorithm):
    """Score residual blocks, remove the weakest, fine-tune, export.

    Args:
        architecture: Model config (or module), e.g. an mmpretrain
            ``ImageClassifier``.
        input_shape: Example input shape for tracing.
        metric: Block metric name or config: ``'block_cka'``,
            ``'block_cosine'`` (features) or ``'block_weight_norm'``.
        metric_batches: Training batches for feature metrics.
        target: ``dict(mode='num_blocks', num=k)`` removes the k weakest
            blocks; ``dict(mode='flops', ratio=r)`` (or ``flops_ratio=r``)
            removes weakest blocks until at most ``r`` of the FLOPs remain
            (see :meth:`select`); ``dict(mode='latency', ratio=r | ms=t)``
            (and the table keys of channel pruning's latency target) until
            the latency-table estimate is at most ``r`` of the dense one.
        removal_mode: ``'identity'`` (only blocks with identity shortcuts)
            or ``'keep_shortcut'`` (projection blocks may lose their
            residual branch and keep the shortcut).
        channel_pruning: Optional :class:`OneShotPruning` arguments
            (``metric``, ``target``, ``pruner``, ``cdp_by``,
            ``metric_batches``) for a width step on the shallower model; its
            FLOPs target is relative to the shallower model.
        merging: Optional block merging (rule in
            :mod:`mmrazor_ext.graph.merge`): ``dict(linear_tol=0.25,
            max_blocks=None, allow_more_flops=True, batches=None)``. Blocks
            not removed whose measured ``merge_error`` (on ``batches``
            training batches, default ``metric_batches``) is at most
            ``linear_tol`` are composed into one conv each, lowest error
            first, at most ``max_blocks``; with a FLOPs target the MACs a
            merge adds are paid for by removing more blocks
            (``allow_more_flops=False``: skip such merges). ``target=dict(
            mode='num_blocks', num=0)`` merges without removing.
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
        reconstruct: See :class:`PruningAlgorithm`; refits the consumers of
            the channels pruned by the width step (``channel_pruning``) to
            the shallower model's outputs (block removal itself has nothing
            to refit: a removed block's consumers see an identity); without
            a width step it does nothing.
    """

    TARGET_MODES = {'num_blocks': 'num', 'flops': 'ratio', 'latency': 'ratio'}
    DEFAULT_TARGET = dict(mode='num_blocks', num=1)
    METRIC_KIND = LayerMetric

    def __init__(self, architecture: dict | nn.Module,
                 input_shape: Iterable[int] = (1, 3, 32, 32),
                 metric: str | dict = 'block_cka', metric_batches: int = 16,
                 target: dict | None = None,
                 removal_mode: str = 'identity',
                 merging: dict | None = None,
                 channel_pruning: dict | None = None,
                 fuse_bn: bool = False,
                 distill: dict | None = None,
                 init_checkpoint: str | None = None,
                 bn_recalib_batches: int = 20,
                 leaf_modules: Iterable[type | str] = (),
                 data_preprocessor: dict | None = None,
                 init_cfg: dict | None = None,
                 reconstruct: dict | None = None):
        super().__init__(architecture, input_shape, metric, target,
                         init_checkpoint, bn_recalib_batches,
                         data_preprocessor, init_cfg, reconstruct)
        if removal_mode not in ('identity', 'keep_shortcut'):
            raise ValueError(f"removal_mode must be 'identity' or "
                             f"'keep_shortcut', got {removal_mode!r}")
        self.removal_mode = removal_mode
        self.merging = self._check_merging(merging, int(metric_batches))
        if self.merging is not None and self.target['mode'] == 'latency':
            raise ValueError("merging: not available with target mode="
                             "'latency' (a merged conv is not in the latency "
                             'table); use a FLOPs target or no merging')
        self.channel_pruning = dict(channel_pruning) if channel_pruning \
            else None
        self.fuse_bn = bool(fuse_bn)
        self.metric_batches = int(metric_batches)
        self.leaf_modules = tuple(leaf_modules)
        self.distill = self._check_distill(distill)
        # A frozen copy of the original, outside the module tree (not in the
        # optimizer or checkpoints).
        self.__dict__['_teacher'] = None
        if self.distill is not None:
            teacher = copy.deepcopy(self.architecture).eval()
            teacher.requires_grad_(False)
            self.__dict__['_teacher'] = teacher
        self.removed: list[str] = []
        self.merged: list[str] = []
        # Not a submodule: it shares ``architecture`` (no duplicate keys).
        self.__dict__['_width'] = None

    # -- config checks ----------------------------------------------------------
    @classmethod
    def check_target(cls, target: dict) -> dict:
        if isinstance(target, dict) and target.get('mode') == 'latency':
            # blocks go weakest first: no channel sampling or calibration
            return check_latency_config(target, 'target')
        return super().check_target(target)

    @staticmethod
    def _check_merging(merge: dict | None, default_batches: int
                     ) -> dict | None:
        if merge is None:
            return None
        merge = {'linear_tol': 0.25, 'max_blocks': None,
                 'allow_more_flops': True, 'batches': None, **merge}
        unknown = set(merge) - set(_MERGE_KEYS)
        if unknown:
            raise ValueError(f'merging: unknown keys {sorted(unknown)} '
                             f'(known: {list(_MERGE_KEYS)})')
        tol = merge['linear_tol']
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or \
                not tol >= 0:
            raise ValueError(f'merging.linear_tol must be a number >= 0, got '
                             f'{tol!r}')
        for key in ('max_blocks', 'batches'):
            v = merge[key]
            if v is not None and (isinstance(v, bool) or
                                  not isinstance(v, int) or v < 0):
                raise ValueError(f'merging.{key} must be None or an int >= 0, '
                                 f'got {v!r}')
        if not isinstance(merge['allow_more_flops'], bool):
            raise ValueError('merging.allow_more_flops must be a bool, got '
                             f"{merge['allow_more_flops']!r}")
        if merge['batches'] is None:
            merge['batches'] = default_batches
        if merge['batches'] < 1:
            raise ValueError('merging.batches must be >= 1 (the merge error is '
                             'measured on calibration batches)')
        merge['linear_tol'] = float(tol)
        return merge

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

    def structure_state(self) -> dict:
        width = self._width
        subnet = (width.pruner.subnet or {}) if width is not None else {}
        return {'removed': list(self.removed), 'merged': list(self.merged),
                'channel_subnet': {k: v.clone() for k, v in subnet.items()}}

    def load_structure_state(self, state: dict) -> None:
        # removal first, then merging: the order the export applies them
        for key, apply in (('removed', self._remove), ('merged', self._merge)):
            saved = list(state.get(key) or [])
            current = getattr(self, key)
            if saved and not current:
                apply(saved)
            elif saved != current:
                raise RuntimeError(f'checkpoint {key} blocks {saved}, but '
                                   f'this model already {key} {current}')
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
            for batch in itertools.islice(batches, self.metric_batches):
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

    def _merge(self, names: list[str]) -> None:
        # a fresh analysis: removal changed the graph
        merge_blocks(self.architecture, names, self.blocks(), inplace=True,
                     leaf_modules=self.leaf_modules)
        self.merged = list(names)

    def measure_merge(self, batches: Iterable, blocks) -> tuple[dict, dict]:
        """Merge statistics (:class:`~mmrazor_ext.graph.MergeMeter`) and
        MAC changes (:func:`merge_flops_delta`) of every mergeable block.

        Returns:
            ``(stats, delta)``: ``{block: {'merge_error', 'nonlinearity',
            'changed', 'exact', 'n'}}`` and ``{block: MACs added}``.
        """
        names = [n for n, i in find_mergeable(blocks).items() if i.mergeable]
        meter = MergeMeter(self.architecture, blocks, names)
        for batch in itertools.islice(batches, self.merging['batches']):
            meter.update(to_tensors(self, batch)[0])
        if names and meter.num_samples == 0:
            raise ValueError('merging needs calibration batches (got none): '
                             'the merge error is measured on data')
        delta = merge_flops_delta(self.architecture, blocks, names,
                                  self.leaf_modules)
        return meter.statistics(), delta

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

    def channel_pruner(self):
        """The width step's pruner (None before it or without one)."""
        return self._width.pruner if self._width is not None else None

    def reconstruction_reference(self) -> None:
        """None: the width step is reproduced against the shallower model
        with its masks removed (the copy taken before :meth:`prune` would
        still have the removed blocks)."""
        return None

    def prune(self, batches: Iterable, step: int = 1) -> list[str]:
        """Remove the weakest blocks, merge nearly linear ones if
        configured, then prune channels if configured.

        Returns:
            Names of the removed blocks (merged ones: :attr:`merged`).
        """
        cfg = dict(self.metric)
        need = self.metric_batches if METRICS.get(
            cfg['type']).requires_features else 0
        if self.channel_pruning is not None:  # the width step's metric data
            need = max(need, int(self.channel_pruning.get('metric_batches',
                                                          16)))
            sens = self.channel_pruning.get('sensitivity') or {}
            if (self.channel_pruning.get('target') or {}).get(
                    'sampling') == 'sensitivity':
                need = max(need, int(sens.get('bn_batches', 5))
                           + int(sens.get('eval_batches', 5)))
        if self.merging is not None:
            need = max(need, self.merging['batches'])
        batches = list(itertools.islice(batches, need))
        blocks = self.blocks()
        cands = self.candidates(blocks)
        scores = self.score(batches, blocks)
        saved = block_flops(self.architecture, blocks, self.example_inputs,
                            self.removal_mode)
        total = self.complexity()['flops']
        target, cost = self.target, total
        if target['mode'] == 'latency':  # block costs from the table
            lat = LatencyObjective(ChannelPruner(
                self.architecture, self.example_inputs,
                leaf_modules=self.leaf_modules), self.target)
            saved, cost, target = block_latency_savings(
                lat, blocks, cands, self.removal_mode)
        plan = None
        if self.merging is not None:
            stats, delta = self.measure_merge(batches, blocks)
            plan = dict(self.merging, delta=delta, errors={
                n: s['merge_error'] for n, s in stats.items()})
        chosen, merged = plan_fusion(scores, cands, saved, cost, target,
                                     plan)
        if target['mode'] == 'latency':
            self.report['latency'] = dict(lat.summary(block_removal_subnet(
                lat.pruner, blocks, chosen, self.removal_mode)),
                block_saved_ms={n: v * 1e3 for n, v in saved.items()},
                dense_estimated_ms=cost * 1e3)
        self._remove(chosen, blocks)
        if merged:
            self._merge(merged)
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
        if self.merging is not None:
            infos = find_mergeable(blocks)
            self.report.update(
                merging=dict(self.merging), merged_blocks=merged,
                merge_stats={n: {k: _finite(v) if isinstance(v, float) else v
                                 for k, v in s.items()}
                             for n, s in stats.items()},
                merge_flops_delta=delta,
                non_mergeable={n: i.reason for n, i in infos.items()
                               if not i.mergeable})
        msg = f'; merged {len(merged)} blocks {merged}' if merged else ''
        print_log(f'layer pruning: metric {self.metric["type"]}, removed '
                  f'{len(chosen)}/{len(cands)} removable blocks {chosen}'
                  f'{msg}; FLOPs {total / 1e6:.2f} M -> '
                  f'{depth["flops"] / 1e6:.2f} M', logger='current')
        if self.channel_pruning is not None:
            width = self._build_width()
            width.prune(batches, 1)
            self.report['channel_target'] = width.target
        return chosen

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

    def export_check(self, small: nn.Module) -> dict:
        gen = torch.Generator().manual_seed(0)
        return check_equivalence(
            self.architecture, small,
            (torch.randn(self.example_inputs.shape, generator=gen),))

    def pruned_structure(self) -> dict:
        width = self._width.pruner if self._width is not None else None
        return pruned_structure(
            width, example_inputs=(self.example_inputs,),
            removal_mode=self.removal_mode, removed_blocks=self.removed,
            merged_blocks=self.merged, bn_folded=self.fuse_bn)

    def export_summary(self) -> str:
        return (f'exported: removed {len(self.removed)} blocks, merged '
                f'{len(self.merged)}')


def _finite(x: float) -> float | None:
    return None if x != x or x in (float('inf'), float('-inf')) else float(x)
