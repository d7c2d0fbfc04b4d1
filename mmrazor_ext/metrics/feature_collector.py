"""Collect per-channel feature statistics at exact graph nodes.

Features are read from the channel graph's FX ``GraphModule`` rather than
with module hooks: mmpretrain's blocks call one ``ReLU`` module twice, so a
hook on it cannot tell the two activations apart, while graph nodes can.
Only running statistics are kept (per-document pooled means, zero counts,
rank sums), never whole activations, so memory does not grow with the
number of batches beyond one ``(samples, channels)`` matrix for sample-wise
CDP documents.
"""
from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from mmrazor_ext.graph import node_outputs_module
from mmrazor_ext.registry import METRICS

from .feature_stats import (
    class_documents,
    class_sums,
    feature_layout,
    pooled_rows,
    rank_sums,
    zero_counts,
)
from .fm_reconstruction import FMReconstructionCollector
from .taylor import TaylorAccumulator

__all__ = ['FeatureCollector', 'collect_contents', 'collector_options',
           'feature_points']

_PASS_MODULES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm,
                 nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.SiLU,
                 nn.Hardswish, nn.GELU, nn.ELU, nn.Identity, nn.Dropout)
_PASS_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.silu, F.hardswish, F.gelu,
                   operator.add, operator.iadd, torch.add}
STATS = ('pooled', 'zeros', 'rank')


def _is_pass_through(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == 'call_module':
        return isinstance(gm.get_submodule(node.target), _PASS_MODULES)
    if node.op == 'call_function':
        return node.target in _PASS_FUNCTIONS
    if node.op == 'call_method':
        return node.target in ('relu', 'relu_', 'add', 'add_')
    return False


def feature_points(graph, layers: Iterable[str] | None = None
                   ) -> dict[str, str]:
    """Node whose output is each producer layer's post-activation feature.

    From a conv / linear node the walk follows single-user chains of
    normalisation, activation and residual additions (conv -> BN -> add ->
    ReLU in a ResNet block), so the feature is the one the next layer sees.

    Args:
        graph: A :class:`mmrazor_ext.graph.ChannelGraph`.
        layers: Producer layers to locate (default: every producer with
            prunable output channels).

    Returns:
        ``{layer name: FX node name}``.
    """
    gm = graph.gm
    by_target = {}
    for node in gm.graph.nodes:
        if node.op == 'call_module':
            by_target.setdefault(node.target, node)
    # Default: producers whose output channels belong to a prunable space
    # (not the classifier, not ignored layers).
    names = [n for n, r in graph.layers.items()
             if r.producer and graph.channel_map(n, 'out')] \
        if layers is None else list(layers)
    points = {}
    for name in names:
        node = by_target.get(name)
        if node is None:
            raise KeyError(f'feature_points: layer {name!r} is not called '
                           'as a module in the traced graph')
        while len(node.users) == 1:
            (user,) = node.users
            if not _is_pass_through(gm, user):
                break
            node = user
        points[name] = node.name
    return points


class FeatureCollector:
    """Running per-channel statistics of features at graph nodes.

    Args:
        graph: The channel graph (its ``gm`` shares the model's modules, so
            the live weights are used).
        layers: Producer layers whose features to collect (default: those
            with prunable output channels).
        stats: Any of ``pooled`` (average-pooled activation per document),
            ``zeros`` (fraction of zero activations, APoZ) and ``rank``
            (mean matrix rank of each channel's feature map, HRank).
        by: CDP documents: ``'class'`` (mean over each class's samples,
            needs labels) or ``'sample'`` (one document per sample).
        num_classes: Number of classes for ``by='class'``.

    Example:
        >>> col = FeatureCollector(graph, stats=('pooled',), by='class',
        ...                        num_classes=10)
        >>> for x, y in batches:
        ...     col.update(x, y)
        >>> docs = col.documents()   # {layer: (num docs, channels)}
    """

    def __init__(self, graph, layers: Iterable[str] | None = None,
                 stats: Sequence[str] = ('pooled',), by: str = 'class',
                 num_classes: int | None = None):
        bad = set(stats) - set(STATS)
        if bad:
            raise ValueError(f'FeatureCollector: unknown stats {sorted(bad)}; '
                             f'choose from {STATS}')
        if by not in ('class', 'sample'):
            raise ValueError(f"FeatureCollector: by must be 'class' or "
                             f"'sample', got {by!r}")
        if 'pooled' in stats and by == 'class' and not num_classes:
            raise ValueError('FeatureCollector: by="class" needs num_classes')
        self.stats = tuple(stats)
        self.by = by
        self.num_classes = num_classes
        self.points = feature_points(graph, layers)
        # channel axis of each feature (1: maps, -1: linear tokens)
        self._channel_dim = {
            name: feature_layout(graph, graph.gm, name).channel_dim
            if name in graph.layers else 1 for name in self.points}
        self._order = list(dict.fromkeys(self.points.values()))
        self._gm = node_outputs_module(graph.gm, self._order)
        self.num_samples = 0
        self._pooled_sum: dict[str, torch.Tensor] = {}
        self._class_count = torch.zeros(num_classes or 0)
        self._pooled_rows: dict[str, list[torch.Tensor]] = {}
        self._zeros: dict[str, torch.Tensor] = {}
        self._elements: dict[str, int] = {}
        self._rank_sum: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def update(self, inputs: torch.Tensor | Sequence[torch.Tensor],
               labels: torch.Tensor | None = None) -> None:
        """Run one batch (model in eval mode) and update the statistics."""
        if isinstance(inputs, torch.Tensor):
            inputs = (inputs,)
        if 'pooled' in self.stats and self.by == 'class' and labels is None:
            raise ValueError('FeatureCollector.update: by="class" needs labels')
        training = self._gm.training
        self._gm.eval()
        try:
            outs = self._gm(*inputs)
        finally:
            self._gm.train(training)
        by_node = dict(zip(self._order, outs))
        for layer, node in self.points.items():
            self._accumulate(layer, by_node[node].detach().float(), labels)
        self.num_samples += inputs[0].shape[0]
        if 'pooled' in self.stats and self.by == 'class':
            self._class_count += torch.bincount(
                labels.cpu().long(), minlength=self.num_classes).float()

    def _accumulate(self, layer: str, feat: torch.Tensor,
                    labels: torch.Tensor | None) -> None:
        # The statistic functions are shared with prepare_contents, so raw
        # maps in a metric's contents give exactly these statistics.
        if self._channel_dim[layer] != 1:
            feat = feat.movedim(self._channel_dim[layer], 1)
        b, c = feat.shape[:2]
        flat = feat.reshape(b, c, -1)
        if 'pooled' in self.stats:
            pooled = pooled_rows(flat)                   # (B, C)
            if self.by == 'sample':
                self._pooled_rows.setdefault(layer, []).append(pooled.cpu())
            else:
                sums, _ = class_sums(pooled, labels, self.num_classes)
                self._pooled_sum[layer] = self._pooled_sum.get(layer, 0) + sums
        if 'zeros' in self.stats:
            z = self._zeros.setdefault(layer, torch.zeros(c))
            z += zero_counts(flat).cpu()
            self._elements[layer] = self._elements.get(layer, 0) + \
                b * flat.shape[-1]
        if 'rank' in self.stats:
            if feat.dim() != 4:
                raise ValueError(f'rank statistics need 4-D feature maps; '
                                 f'{layer} gives {tuple(feat.shape)}')
            self._rank_sum[layer] = self._rank_sum.get(
                layer, torch.zeros(c)) + rank_sums(feat).cpu()

    def documents(self) -> dict[str, torch.Tensor]:
        """``{layer: (documents, channels)}`` average-pooled activations.

        Class documents with no sample are dropped.
        """
        if 'pooled' not in self.stats:
            raise RuntimeError('documents() needs stats to include "pooled"')
        if self.by == 'sample':
            return {k: torch.cat(v) for k, v in self._pooled_rows.items()}
        return {k: class_documents(v, self._class_count)
                for k, v in self._pooled_sum.items()}

    def zero_fraction(self) -> dict[str, torch.Tensor]:
        """``{layer: (channels,)}`` average percentage of zeros (APoZ)."""
        return {k: v / max(self._elements[k], 1) for k, v in self._zeros.items()}

    def mean_rank(self) -> dict[str, torch.Tensor]:
        """``{layer: (channels,)}`` mean rank of each channel's feature map."""
        return {k: v / max(self.num_samples, 1)
                for k, v in self._rank_sum.items()}


# Metric-config keys that configure the collector of a ``needs``, not the
# metric itself.
_COLLECTOR_OPTIONS = {'fm_gram': ('n_points_per_fm',)}


def collector_options(metric_cfg: dict) -> tuple[dict, dict]:
    """Split a metric config into the metric's and its collector's part.

    Args:
        metric_cfg: ``dict(type=name, **kwargs)`` of a registered metric.

    Returns:
        ``(metric config, collector options)``.
    """
    needs = getattr(METRICS.get(metric_cfg['type']), 'needs', 'weights')
    keys = _COLLECTOR_OPTIONS.get(needs, ())
    return ({k: v for k, v in metric_cfg.items() if k not in keys},
            {k: v for k, v in metric_cfg.items() if k in keys})


def collect_contents(needs: str, graph, model: nn.Module, batches: Iterable,
                     to_tensors: Callable[[Any], tuple],
                     loss_fn: Callable[[Any], torch.Tensor] | None = None,
                     forward: Callable | None = None, by: str = 'class',
                     num_classes: int | None = None, **options
                     ) -> dict[str, Any] | None:
    """The ``contents`` a metric declares in its ``needs``.

    Args:
        needs: ``ChannelMetric.needs`` of the metric.
        graph: The channel graph of ``model``.
        model: The model whose features / gradients are read.
        batches: Data batches; only iterated when something is collected.
        to_tensors: ``batch -> (inputs, labels)``.
        loss_fn: ``batch -> loss`` (``'gradients'``).
        forward: ``forward(model, inputs)`` (``'fm_gram'``; default
            ``model(inputs)``).
        by: CDP documents, ``'class'`` or ``'sample'`` (``'pooled'``).
        num_classes: Classes for ``by='class'``.
        **options: Collector options (:func:`collector_options`).

    Returns:
        The contents for the metric, or None for ``'weights'`` (the metric
        reads the model).
    """
    if needs == 'weights':
        return None
    if needs in STATS:
        col = FeatureCollector(graph, stats=(needs,), by=by,
                               num_classes=num_classes)
        for batch in batches:
            col.update(*to_tensors(batch))
        return {'pooled': col.documents, 'zeros': col.zero_fraction,
                'rank': col.mean_rank}[needs]()
    if needs == 'gradients':
        if loss_fn is None:
            raise ValueError('collect_contents: "gradients" needs loss_fn')
        return TaylorAccumulator(graph, model).run(batches, loss_fn)
    if needs == 'fm_gram':
        return FMReconstructionCollector(graph, model, **options).collect(
            [to_tensors(b)[0] for b in batches], forward=forward)
    raise ValueError(f'collect_contents: nothing serves needs={needs!r}')
