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
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import fx, nn

__all__ = ['FeatureCollector', 'feature_points']

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
        self._gm = self._instrument(graph.gm, list(self.points.values()))
        self.num_samples = 0
        self._pooled_sum: dict[str, torch.Tensor] = {}
        self._class_count = torch.zeros(num_classes or 0)
        self._pooled_rows: dict[str, list[torch.Tensor]] = {}
        self._zeros: dict[str, torch.Tensor] = {}
        self._elements: dict[str, int] = {}
        self._rank_sum: dict[str, torch.Tensor] = {}

    @staticmethod
    def _instrument(gm: fx.GraphModule, node_names: list[str]
                    ) -> fx.GraphModule:
        """A GraphModule (sharing gm's modules) returning the given nodes."""
        new = fx.Graph()
        val_map: dict = {}
        new.graph_copy(gm.graph, val_map)
        by_name = {n.name: n for n in gm.graph.nodes}
        unique = list(dict.fromkeys(node_names))
        new.output(tuple(val_map[by_name[n]] for n in unique))
        inst = fx.GraphModule(gm, new)
        inst.graph.eliminate_dead_code()  # skip layers after the last point
        inst.recompile()
        inst._point_order = unique
        return inst

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
        by_node = dict(zip(self._gm._point_order, outs))
        for layer, node in self.points.items():
            self._accumulate(layer, by_node[node].detach().float(), labels)
        self.num_samples += inputs[0].shape[0]
        if 'pooled' in self.stats and self.by == 'class':
            self._class_count += torch.bincount(
                labels.cpu().long(), minlength=self.num_classes).float()

    def _accumulate(self, layer: str, feat: torch.Tensor,
                    labels: torch.Tensor | None) -> None:
        b, c = feat.shape[:2]
        flat = feat.reshape(b, c, -1)
        if 'pooled' in self.stats:
            pooled = flat.mean(-1)                       # (B, C)
            if self.by == 'sample':
                self._pooled_rows.setdefault(layer, []).append(pooled.cpu())
            else:
                acc = self._pooled_sum.setdefault(
                    layer, torch.zeros(self.num_classes, c))
                acc.index_add_(0, labels.cpu().long(), pooled.cpu())
        if 'zeros' in self.stats:
            z = self._zeros.setdefault(layer, torch.zeros(c))
            z += (flat == 0).sum(dim=(0, 2)).cpu().float()
            self._elements[layer] = self._elements.get(layer, 0) + \
                b * flat.shape[-1]
        if 'rank' in self.stats:
            if feat.dim() != 4:
                raise ValueError(f'rank statistics need 4-D feature maps; '
                                 f'{layer} gives {tuple(feat.shape)}')
            r = torch.linalg.matrix_rank(feat).float().sum(0)  # (C,)
            self._rank_sum[layer] = self._rank_sum.get(
                layer, torch.zeros(c)) + r.cpu()

    def documents(self) -> dict[str, torch.Tensor]:
        """``{layer: (documents, channels)}`` average-pooled activations.

        Class documents with no sample are dropped.
        """
        if 'pooled' not in self.stats:
            raise RuntimeError('documents() needs stats to include "pooled"')
        if self.by == 'sample':
            return {k: torch.cat(v) for k, v in self._pooled_rows.items()}
        seen = self._class_count > 0
        return {k: v[seen] / self._class_count[seen, None]
                for k, v in self._pooled_sum.items()}

    def zero_fraction(self) -> dict[str, torch.Tensor]:
        """``{layer: (channels,)}`` average percentage of zeros (APoZ)."""
        return {k: v / max(self._elements[k], 1) for k, v in self._zeros.items()}

    def mean_rank(self) -> dict[str, torch.Tensor]:
        """``{layer: (channels,)}`` mean rank of each channel's feature map."""
        return {k: v / max(self.num_samples, 1)
                for k, v in self._rank_sum.items()}
