"""Interface of layer (block) importance metrics and their feature collector.

A layer metric is a class in :data:`mmrazor_ext.registry.METRICS` (one file
per metric, ``@METRICS.register_module('block_...')``) whose instances are
called as ``metric(blocks, model, contents) -> {block name: float}``, higher
= more important, for every block of ``blocks`` (a
:class:`mmrazor_ext.graph.BlockAnalysis`). Feature metrics read
``contents``, the statistics of :class:`BlockFeatureCollector`; weight
metrics ignore it.

Feature statistics are running sums over batches (never whole activations):
the biased HSIC terms of linear CKA per mini-batch (Nguyen et al., 2021,
"Do wide and deep networks learn the same things?", accumulate HSIC over
mini-batches the same way) and the sum of per-sample cosine similarities
between a block's input and output.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from mmrazor_ext.graph import node_outputs_module

from .base import registered_name

__all__ = ['LayerMetric', 'BlockStatMetric', 'BlockFeatureCollector',
           'hsic_terms']


class LayerMetric:
    """Base class of block-importance metrics."""

    #: whether ``contents`` must come from :class:`BlockFeatureCollector`
    requires_features: bool = False

    def __call__(self, blocks, model: nn.Module,
                 contents: dict | None = None) -> dict[str, float]:
        raise NotImplementedError

    @staticmethod
    def _check(blocks, contents, name: str) -> dict:
        if not contents:
            raise ValueError(
                f'{name} needs collected features: contents=BlockFeature'
                'Collector(blocks).update(...) then .statistics()')
        unknown = set(contents) - set(blocks.blocks)
        if unknown:
            raise KeyError(f'{name}: unknown blocks in contents: '
                           f'{sorted(unknown)}')
        return contents


class BlockStatMetric(LayerMetric):
    """Template of a feature metric that scores each block from its own
    :meth:`BlockFeatureCollector.statistics` entry: a subclass implements
    :meth:`block_score`."""

    requires_features = True

    def block_score(self, stats: dict) -> float:
        """Importance of one block from ``{'hsic', 'cos_sum', 'n'}``."""
        raise NotImplementedError

    def __call__(self, blocks, model: nn.Module,
                 contents: dict | None = None) -> dict[str, float]:
        contents = self._check(blocks, contents, registered_name(type(self)))
        return {name: self.block_score(stats)
                for name, stats in contents.items()}


def _gram(x: torch.Tensor) -> torch.Tensor:
    x = x.reshape(x.shape[0], -1).double()
    x = x - x.mean(0, keepdim=True)  # centring == H K H for a linear kernel
    return x @ x.t()


def hsic_terms(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Biased HSIC(K, L), HSIC(K, K), HSIC(L, L) of one batch (linear kernel).

    Args:
        x: ``(batch, ...)`` features; ``y``: ``(batch, ...)`` features (any
            feature shapes: CKA compares sample-by-sample Gram matrices).

    Returns:
        ``tensor([kl, kk, ll])``; linear CKA = ``kl / sqrt(kk * ll)``.
    """
    k, l_ = _gram(x), _gram(y)
    return torch.stack([(k * l_).sum(), (k * k).sum(), (l_ * l_).sum()])


class BlockFeatureCollector:
    """Running input/output statistics of residual blocks.

    Args:
        blocks: A :class:`mmrazor_ext.graph.BlockAnalysis` (its ``gm`` shares
            the model's modules, so live weights are used).
        names: Blocks to collect (default: every block with one input and
            one output node).

    Example:
        >>> col = BlockFeatureCollector(find_blocks(model, x))
        >>> for inputs in batches:
        ...     col.update(inputs)
        >>> stats = col.statistics()   # {block: {'hsic', 'cos_sum', 'n'}}
    """

    def __init__(self, blocks, names: Iterable[str] | None = None):
        names = [n for n, b in blocks.blocks.items()
                 if b.input_node and b.output_node] \
            if names is None else list(names)
        self.names = names
        self.points = {n: (blocks.blocks[n].input_node,
                           blocks.blocks[n].output_node) for n in names}
        nodes = list(dict.fromkeys(p for pair in self.points.values()
                                   for p in pair))
        self._gm = node_outputs_module(blocks.gm, nodes)
        self._order = nodes
        self._hsic = {n: torch.zeros(3, dtype=torch.float64) for n in names}
        self._cos = dict.fromkeys(names, 0.0)
        self.num_samples = 0

    @torch.no_grad()
    def update(self, inputs: torch.Tensor | Sequence[torch.Tensor]) -> None:
        """Run one batch (in eval mode) and accumulate the statistics."""
        if isinstance(inputs, torch.Tensor):
            inputs = (inputs,)
        # Restore each module's own mode: the GraphModule shares the model's
        # modules, and its own flag says nothing about theirs.
        modes = [(m, m.training) for m in self._gm.modules()]
        self._gm.eval()
        try:
            outs = dict(zip(self._order, self._gm(*inputs)))
        finally:
            for m, mode in modes:
                m.training = mode
        for name, (i, o) in self.points.items():
            x, y = outs[i].detach(), outs[o].detach()
            self._hsic[name] += hsic_terms(x, y).cpu()
            if x.shape == y.shape:
                cos = torch.nn.functional.cosine_similarity(
                    x.reshape(x.shape[0], -1).double(),
                    y.reshape(y.shape[0], -1).double(), dim=1)
                self._cos[name] += float(cos.sum())
            else:
                self._cos[name] = float('nan')  # shapes differ: undefined
        self.num_samples += inputs[0].shape[0]

    def statistics(self) -> dict[str, dict]:
        """``{block: {'hsic': tensor([kl, kk, ll]), 'cos_sum': float,
        'n': samples}}``."""
        return {n: {'hsic': self._hsic[n].clone(), 'cos_sum': self._cos[n],
                    'n': self.num_samples} for n in self.names}
