"""Templates for one-file channel metrics.

Most metrics have one of two shapes, so a new one is a file with its
``@METRICS.register_module('name')`` and one method:

* :class:`WeightMetric`: a score per filter from the producer's weight
  (``needs = 'weights'``), summed over a space's producers;
* :class:`FeatureStatMetric`: a per-channel statistic that
  :class:`~mmrazor_ext.metrics.FeatureCollector` serves (``needs`` names
  it), averaged over a space's members.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import ChannelMetric, producer_weights, scatter_to_spaces

__all__ = ['FeatureStatMetric', 'WeightMetric']


class WeightMetric(ChannelMetric):
    """Score of a unit = sum over the space's producers of
    :meth:`filter_scores` of the filters writing that unit.

    ``contents`` (optional): ``{layer name: weight}`` with output channels
    on dim 0, replacing the model's weights for those layers (e.g. weights
    of another checkpoint); layers not listed use their current weights.
    """

    needs = 'weights'

    def filter_scores(self, weight: torch.Tensor) -> torch.Tensor:
        """``(out channels,)`` scores of a detached, output-first weight."""
        raise NotImplementedError

    def __call__(self, graph, model: nn.Module,
                 contents: dict[str, Any] | None = None
                 ) -> dict[str, torch.Tensor]:
        weights = producer_weights(graph, model)
        if contents:
            weights.update(self.check_contents(graph, contents))
        scores = {name: self.filter_scores(w.detach())
                  for name, w in weights.items()}
        return scatter_to_spaces(graph, scores, role='out', reduce='sum')


class FeatureStatMetric(ChannelMetric):
    """Score of a unit = mean over the space's members of
    :meth:`channel_scores` of a per-channel feature statistic.

    ``contents``: ``{producer layer: (channels,) statistic}`` from
    :class:`~mmrazor_ext.metrics.FeatureCollector` with
    ``stats=(needs,)``, or the layer's raw post-activation features
    (``(N, C, H, W)`` maps, ``(N, C)`` / ``(N, L, C)`` tokens), reduced to
    that statistic as the collector reduces them
    (:meth:`~mmrazor_ext.metrics.ChannelMetric.prepare_contents`).
    """

    #: the FeatureCollector statistic read (set by each metric)
    needs = 'zeros'

    def channel_scores(self, stat: torch.Tensor) -> torch.Tensor:
        """Scores (higher = more important) from the statistic."""
        return stat

    def __call__(self, graph, model: nn.Module,
                 contents: dict[str, Any] | None = None
                 ) -> dict[str, torch.Tensor]:
        stats = self.required_contents(
            graph, model, contents, f'contents={{layer: {self.needs} '
            f'statistic}} from FeatureCollector(stats=({self.needs!r},)) or '
            '{layer: feature maps}')
        scores = {k: self.channel_scores(v.float()) for k, v in stats.items()}
        return scatter_to_spaces(graph, scores, role='out', reduce='mean')
