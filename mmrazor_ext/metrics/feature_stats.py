"""Per-channel feature statistics, from collected or raw feature maps.

Data-driven metrics score what :class:`~mmrazor_ext.metrics.FeatureCollector`
serves (their ``needs``): average-pooled documents (``'pooled'``, CDP), zero
fractions (``'zeros'``, APoZ), mean matrix ranks (``'rank'``, HRank) or a
consumer's contribution Gram matrix (``'fm_gram'``, fm-reconstruction).
Callers may also put the raw activations in ``contents``, as the seed's
``contents={'layer_name': features}`` does. This module is the one place
both paths go through:

* the statistic functions (:func:`pooled_rows`, :func:`class_sums`,
  :func:`class_documents`, :func:`zero_counts`, :func:`rank_sums`) are what
  the collector accumulates batch by batch, so a statistic computed from
  raw maps is the collector's statistic of the same data;
* a :class:`FeatureRule` per ``needs`` says which tensor shapes a layer
  accepts (the statistic itself, or raw maps in the layer's layout, see
  :class:`FeatureLayout`) and converts raw maps; ``fm_gram``'s rule lives
  with its metric (:func:`register_feature_rule`);
* :func:`statistic_contents` applies the rule of a metric's ``needs`` to a
  whole ``contents`` dict. A tensor no rule fits is a ``ValueError`` naming
  the metric, the layer, its shape and the shapes accepted.

``contents`` may hold one extra entry, ``contents['labels']``: the ``(N,)``
class ids of the samples of the raw maps. With it CDP's documents are
class-wise (the mean over each class's samples, classes in id order, absent
classes dropped: ``FeatureCollector(by='class')``); without it there is one
document per sample (``by='sample'``). Metrics that do not use labels
ignore the entry.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mmrazor_ext.graph import get_layer_kind

__all__ = ['FEATURE_RULES', 'LABELS_KEY', 'FeatureLayout', 'FeatureRule',
           'class_documents', 'class_sums', 'feature_layout', 'pooled_rows',
           'rank_sums', 'register_feature_rule', 'statistic_contents',
           'zero_counts']

#: The ``contents`` key of the optional ``(N,)`` sample labels.
LABELS_KEY = 'labels'

_SPATIAL = {1: 'L', 2: 'H, W', 3: 'D, H, W'}


# -- statistics (shared with FeatureCollector) ------------------------------
def pooled_rows(flat: torch.Tensor) -> torch.Tensor:
    """``(N, C)`` average-pooled activation of each sample and channel.

    Args:
        flat: ``(N, C, P)`` activations, positions flattened.
    """
    return flat.mean(-1)


def class_sums(rows: torch.Tensor, labels: torch.Tensor, num_classes: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class sums of sample rows and the number of samples per class.

    Args:
        rows: ``(N, C)`` pooled activations (on any device).
        labels: ``(N,)`` class ids in ``[0, num_classes)``.
        num_classes: Number of classes.

    Returns:
        ``(sums (num_classes, C), counts (num_classes,))``, float, CPU.
    """
    labels = labels.detach().cpu().long()
    sums = torch.zeros(num_classes, rows.shape[1])
    sums.index_add_(0, labels, rows.detach().float().cpu())
    counts = torch.bincount(labels, minlength=num_classes).float()
    return sums, counts


def class_documents(sums: torch.Tensor, counts: torch.Tensor
                    ) -> torch.Tensor:
    """Class-wise CDP documents: the mean row of each class with samples."""
    seen = counts > 0
    return sums[seen] / counts[seen, None]


def zero_counts(flat: torch.Tensor) -> torch.Tensor:
    """``(C,)`` number of exact zeros per channel of ``(N, C, P)`` maps."""
    return (flat == 0).sum(dim=(0, 2)).float()


def rank_sums(maps: torch.Tensor) -> torch.Tensor:
    """``(C,)`` sum over samples of each channel's feature-map rank.

    Args:
        maps: ``(N, C, H, W)`` channel-first feature maps.
    """
    return torch.linalg.matrix_rank(maps.float()).float().sum(0)


# -- layouts -----------------------------------------------------------------
@dataclass(frozen=True)
class FeatureLayout:
    """Where the channels of one layer's activations are.

    Attributes:
        layer: Layer name.
        channels: Number of channels on the chosen side of the layer.
        channel_dim: Channel axis of the activation (1: channel first as
            convolutions, -1: channel last as linear layers on tokens).
        ndim: Exact number of dims of a raw activation (a convolution's
            ``2 + len(kernel_size)``), or None (any number from 2 on).
        module: The layer's module (None for a free tensor).
    """

    layer: str
    channels: int
    channel_dim: int = 1
    ndim: int | None = None
    module: nn.Module | None = None

    def describe(self) -> str:
        """The raw shapes accepted, e.g. ``(N, 16, H, W)``."""
        c = self.channels
        if self.channel_dim != 1:
            return f'(N, {c}) or (N, L, {c})'
        if self.ndim is None:
            return f'(N, {c}) or (N, {c}, ...)'
        spatial = _SPATIAL.get(self.ndim - 2)
        return f'(N, {c}, {spatial})' if spatial else f'(N, {c})'

    def fits(self, value: torch.Tensor) -> bool:
        """Whether ``value`` is a batch of raw activations of this layout."""
        if value.ndim < 2 or value.shape[0] < 1:
            return False
        if self.ndim is not None and self.channel_dim == 1 and \
                value.ndim != self.ndim:
            return False
        return value.shape[self.channel_dim] == self.channels

    def channels_first(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` with the channel axis moved to dim 1."""
        return value if self.channel_dim == 1 else \
            value.movedim(self.channel_dim, 1)

    def flat(self, value: torch.Tensor) -> torch.Tensor:
        """``(N, C, P)``: channels on dim 1, positions flattened."""
        value = self.channels_first(value)
        return value.reshape(value.shape[0], value.shape[1], -1)


def feature_layout(graph, model: nn.Module, layer: str, role: str = 'out'
                   ) -> FeatureLayout:
    """The activation layout of ``layer``'s output (or input) channels.

    Args:
        graph: The channel graph.
        model: The model (for the module's kernel size).
        layer: A layer of ``graph``.
        role: ``'out'`` (the layer's output, e.g. a producer's features) or
            ``'in'`` (its input, e.g. a consumer's input maps).
    """
    rec = graph.layers[layer]
    slots = rec.in_slots if role == 'in' else rec.out_slots
    channels = 0 if slots is None else int(slots.numel())
    try:
        kind = get_layer_kind(rec.kind)
        dim = kind.in_dim if role == 'in' else kind.out_dim
    except KeyError:  # a free tensor ('param')
        dim = 1
    try:
        module = model.get_submodule(layer)
    except AttributeError:
        module = None
    kernel = getattr(module, 'kernel_size', None)
    ndim = 2 + len(kernel) if isinstance(kernel, tuple) else None
    return FeatureLayout(layer, channels, 1 if dim == 1 else -1, ndim, module)


# -- rules ---------------------------------------------------------------------
@dataclass(frozen=True)
class FeatureRule:
    """How ``contents`` entries become the statistic of one ``needs``.

    Attributes:
        convert: ``convert(value, layout, labels) -> statistic`` or None when
            ``value`` fits none of the accepted shapes (the caller raises);
            it may raise ``ValueError`` for a specific problem.
        accepted: ``accepted(layout) -> str``: the shapes accepted, for
            error messages.
        role: Which side of the keyed layer the activations are
            (``'out'``: its output features; ``'in'``: its input maps).
    """

    convert: Callable[[torch.Tensor, FeatureLayout, torch.Tensor | None],
                      torch.Tensor | None]
    accepted: Callable[[FeatureLayout], str]
    role: str = 'out'


#: ``{needs: FeatureRule}``; ``needs`` without a rule take contents as given.
FEATURE_RULES: dict[str, FeatureRule] = {}


def register_feature_rule(needs: str, accepted: Callable[[FeatureLayout], str],
                          role: str = 'out') -> Callable:
    """Decorator registering ``convert`` as the :class:`FeatureRule` of
    ``needs`` (replacing any earlier one)."""
    def deco(convert):
        FEATURE_RULES[needs] = FeatureRule(convert, accepted, role)
        return convert
    return deco


def _labels(contents: Mapping[str, Any], graph, metric: str
            ) -> torch.Tensor | None:
    if LABELS_KEY not in contents or LABELS_KEY in graph.layers:
        return None
    labels = torch.as_tensor(contents[LABELS_KEY])
    if labels.ndim != 1 or labels.is_floating_point() or labels.is_complex() \
            or labels.numel() < 1 or int(labels.min()) < 0:
        raise ValueError(
            f"{metric}: contents['{LABELS_KEY}'] must be a 1-D tensor of "
            f'non-negative integer class ids, one per sample; got '
            f'{labels.dtype} of shape {tuple(labels.shape)}')
    return labels.long()


def statistic_contents(needs: str, graph, model: nn.Module,
                       contents: Mapping[str, Any], metric: str
                       ) -> dict[str, torch.Tensor]:
    """``contents`` with every entry turned into the ``needs`` statistic.

    Args:
        needs: The metric's ``needs``; one with no :class:`FeatureRule`
            returns the layer entries as tensors, unchanged.
        graph: The channel graph (the keys must be its layers).
        model: The model (module kernel sizes, consumer weights).
        contents: ``{layer: statistic or raw activations}`` and optionally
            ``contents['labels']``.
        metric: Metric name for error messages.

    Returns:
        ``{layer: statistic}`` (the labels entry removed).

    Raises:
        KeyError: A key is not a layer of ``graph``.
        ValueError: A tensor fits none of the layer's accepted shapes.
    """
    labels = _labels(contents, graph, metric)
    entries = {k: v for k, v in contents.items()
               if k != LABELS_KEY or k in graph.layers}
    unknown = set(entries) - set(graph.layers)
    if unknown:
        raise KeyError(f'{metric}: unknown layers in contents: '
                       f'{sorted(unknown)}')
    rule = FEATURE_RULES.get(needs)
    if rule is None:
        return entries
    res = {}
    for layer, value in entries.items():
        value = torch.as_tensor(value).detach()
        layout = feature_layout(graph, model, layer, rule.role)
        if not layout.channels:
            side = 'input' if rule.role == 'in' else 'output'
            raise ValueError(f'{metric}: layer {layer!r} has no '
                             f'{side} channels in the channel graph; key its '
                             f'contents by a layer that has them')
        try:
            stat = rule.convert(value, layout, labels)
        except ValueError as e:
            raise ValueError(f'{metric}: layer {layer!r}: {e}') from None
        if stat is None:
            raise ValueError(
                f'{metric}: layer {layer!r} got a tensor of shape '
                f'{tuple(value.shape)}; accepted: {rule.accepted(layout)}')
        res[layer] = stat
    return res


def _check_labels(labels: torch.Tensor, n: int) -> None:
    if labels.numel() != n:
        raise ValueError(f"contents['{LABELS_KEY}'] has {labels.numel()} "
                         f'entries but the tensor has {n} samples')


def _accepted_pooled(layout: FeatureLayout) -> str:
    return (f'(documents, {layout.channels}) pooled documents, or '
            f'{layout.describe()} feature maps (one document per sample; '
            f"with contents['{LABELS_KEY}'] = (N,) class ids, one per "
            'class)')


@register_feature_rule('pooled', _accepted_pooled)
def _pooled(value, layout, labels):
    if value.ndim == 2 and value.shape[1] == layout.channels and \
            value.shape[0] >= 1:
        rows = value.float()     # documents, or per-sample pooled rows
    elif layout.fits(value):
        rows = pooled_rows(layout.flat(value.float()))
    else:
        return None
    if labels is None:
        return rows
    _check_labels(labels, rows.shape[0])
    return class_documents(*class_sums(rows, labels, int(labels.max()) + 1))


@register_feature_rule(
    'zeros', lambda lay: f'({lay.channels},) zero fraction, or '
    f'{lay.describe()} feature maps')
def _zeros(value, layout, labels):
    if value.ndim == 1 and value.numel() == layout.channels:
        return value.float()
    if not layout.fits(value):
        return None
    flat = layout.flat(value)
    return zero_counts(flat) / (flat.shape[0] * flat.shape[2])


def _accepted_rank(layout: FeatureLayout) -> str:
    c = layout.channels
    maps = f'(N, {c}, H, W)' if layout.channel_dim == 1 else \
        f'(N, H, W, {c})'
    return f'({c},) mean rank, or {maps} feature maps'


@register_feature_rule('rank', _accepted_rank)
def _rank(value, layout, labels):
    if value.ndim == 1 and value.numel() == layout.channels:
        return value.float()
    if value.ndim != 4 or not layout.fits(value):
        return None
    return rank_sums(layout.channels_first(value)) / value.shape[0]
