"""Interface of channel-importance metrics.

A metric is a class in :data:`mmrazor_ext.registry.METRICS` (one file per
metric, ``@METRICS.register_module('name')``) whose instances are called as
``metric(graph, model, contents) -> {space name: score tensor}`` with one
score per unit of each ChannelSpace (higher = more important). ``graph`` is
a :class:`mmrazor_ext.graph.ChannelGraph`; ``contents`` maps layer names to
weights or collected features (``None``: the metric reads weights itself).
Data-driven metrics read ``contents`` through
:meth:`ChannelMetric.prepare_contents`, which also turns raw feature maps
into the statistic the metric ``needs`` (see :mod:`.feature_stats`). Most
metrics compute a per-channel score for some layers and hand it to
:func:`scatter_to_spaces`, which aggregates over every layer of a space.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mmrazor_ext.graph import get_layer_kind

from .feature_stats import statistic_contents

__all__ = ['ChannelMetric', 'scatter_to_spaces', 'producer_weights',
           'registered_name']


def registered_name(cls: type) -> str:
    """The name of a metric class in ``METRICS`` (the class name if
    unregistered)."""
    from mmrazor_ext.registry import METRICS
    return next((k for k, v in METRICS.module_dict.items() if v is cls),
                cls.__name__)


class ChannelMetric:
    """Base class of channel-importance metrics."""

    #: What ``contents`` must hold, served by
    #: :func:`~mmrazor_ext.metrics.collect_contents`: ``'weights'`` (nothing
    #: to collect, the metric reads the model), a
    #: :class:`~mmrazor_ext.metrics.FeatureCollector` statistic (``'pooled'``,
    #: ``'zeros'``, ``'rank'``), ``'gradients'`` or ``'fm_gram'``.
    needs: str = 'weights'
    #: derived from :attr:`needs` (kept for older callers)
    requires_features: bool = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.requires_features = cls.needs != 'weights'

    def __call__(self, graph, model: nn.Module,
                 contents: dict[str, Any] | None = None
                 ) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @classmethod
    def registered_name(cls) -> str:
        """The name in ``METRICS`` (the class name if unregistered)."""
        return registered_name(cls)

    @classmethod
    def check_contents(cls, graph, contents: dict[str, Any]
                       ) -> dict[str, Any]:
        """``contents``, after checking that it names layers of ``graph``."""
        unknown = set(contents) - set(graph.layers)
        if unknown:
            raise KeyError(f'{cls.registered_name()}: unknown layers in '
                           f'contents: {sorted(unknown)}')
        return contents

    def prepare_contents(self, graph, model: nn.Module,
                         contents: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``contents`` as the statistic :attr:`needs` names, per layer.

        Each entry may be the collector's statistic or raw activations of
        the layer (e.g. ``(N, C, H, W)`` feature maps, ``(N, C)`` or
        ``(N, L, C)`` tokens), which are reduced as the collector reduces
        them; ``contents['labels']`` (optional) gives the samples' classes.
        See :func:`~mmrazor_ext.metrics.feature_stats.statistic_contents`.

        Raises:
            KeyError: A key is not a layer of ``graph``.
            ValueError: A tensor fits none of the shapes its layer accepts
                (the message names the layer and those shapes).
        """
        return statistic_contents(self.needs, graph, model, contents,
                                  self.registered_name())

    def required_contents(self, graph, model: nn.Module,
                          contents: dict[str, Any] | None, what: str
                          ) -> dict[str, torch.Tensor]:
        """:meth:`prepare_contents` of ``contents``, which this metric
        cannot do without.

        Raises:
            ValueError: ``contents`` is empty (``'<name> needs <what>'``).
        """
        if not contents:
            raise ValueError(f'{self.registered_name()} needs {what}')
        return self.prepare_contents(graph, model, contents)


def producer_weights(graph, model: nn.Module) -> dict[str, torch.Tensor]:
    """Weights of all producer layers, output channel first.

    Returns:
        ``{layer name: weight}`` for conv / linear layers that create a
        space's channels, in their layer kind's ``filters`` view (e.g.
        transposed-conv weights are transposed).
    """
    res = {}
    for name, rec in graph.layers.items():
        if not rec.producer:
            continue
        kind = get_layer_kind(rec.kind)
        res[name] = kind.filters(model.get_submodule(name)).detach()
    return res


def scatter_to_spaces(graph, layer_scores: dict[str, torch.Tensor],
                      role: str = 'out', reduce: str = 'sum'
                      ) -> dict[str, torch.Tensor]:
    """Aggregate per-channel scores of layers into per-unit space scores.

    Args:
        graph: The ChannelGraph.
        layer_scores: ``{layer name: 1-D score per channel of its role}``.
        role: Which side of the layers the scores describe (``out``/``in``).
        reduce: ``sum`` or ``mean`` over the channels mapped to one unit
            (several layers of a residual space, several channels of a
            grouped unit).

    Returns:
        ``{space name: float tensor (num_channels,)}`` for every space;
        units no score reached get 0.
    """
    sums = {n: torch.zeros(s.num_channels) for n, s in graph.spaces.items()}
    counts = {n: torch.zeros(s.num_channels) for n, s in graph.spaces.items()}
    for layer, score in layer_scores.items():
        score = score.detach().float().reshape(-1).cpu()
        for space, layer_idx, unit_idx in graph.channel_map(layer, role):
            sums[space].index_add_(0, unit_idx, score[layer_idx])
            counts[space].index_add_(0, unit_idx,
                                     torch.ones(unit_idx.numel()))
    if reduce == 'mean':
        return {n: sums[n] / counts[n].clamp(min=1) for n in sums}
    if reduce != 'sum':
        raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
    return sums
