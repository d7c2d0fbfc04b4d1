"""CDP: class-wise discriminative power of channels (Xu et al., ACM MM 2021).

Treats channels as words and documents (classes or samples) as texts and
scores a channel by TF-IDF of its average-pooled activations:

    TF_ij  = beta * a_ij / sum_j a_ij            (beta = ln(e*C/coe), 1 if coe=0)
    M_ij   = 1[a_ij >= mean_i a_ij]              (channel j "occurs" in doc i)
    tf_j   = sum_i TF_ij M_ij / sum_i M_ij
    IDF_j  = ln(N / (sum_i M_ij + 1))
    score_j = tf_j * IDF_j
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from mmrazor_ext.registry import METRICS

from .base import ChannelMetric, scatter_to_spaces

_EPS = 1e-12


def cdp_scores(docs: torch.Tensor, coe: float = 0.0) -> torch.Tensor:
    """TF-IDF score per channel from a ``(documents, channels)`` matrix.

    Args:
        docs: ``a_ij``, average-pooled (non-negative) activations.
        coe: The paper's coefficient in ``beta = ln(e * C / coe)``; 0 gives
            ``beta = 1``.

    Returns:
        ``(channels,)`` scores.
    """
    if docs.dim() != 2 or docs.shape[0] < 1:
        raise ValueError(f'cdp: expected a (documents, channels) matrix, got '
                         f'shape {tuple(docs.shape)}')
    n, c = docs.shape
    docs = docs.double()
    beta = 1.0 if coe == 0 else math.log(math.e * c / coe)
    tf = beta * docs / docs.sum(1, keepdim=True).clamp(min=_EPS)
    occurs = (docs >= docs.mean(0, keepdim=True)).double()
    df = occurs.sum(0)
    tf_bar = (tf * occurs).sum(0) / df.clamp(min=1)
    idf = torch.log(n / (df + 1))
    return (tf_bar * idf).float()


@METRICS.register_module('cdp')
class CDPMetric(ChannelMetric):
    """CDP channel importance from collected feature documents.

    Args:
        coe: Coefficient of ``beta`` (0: ``beta = 1``).
        member_norm: How a layer's scores are scaled before a space sums its
            members: ``'max'`` (divide by the largest |score|) or ``'none'``.

    ``contents``: ``{producer layer: (documents, channels) tensor}``, e.g.
    :meth:`FeatureCollector.documents` with ``stats=('pooled',)``, or the
    layer's raw post-activation features (``(N, C, H, W)`` maps, ``(N, C)``
    / ``(N, L, C)`` tokens), average-pooled into one document per sample,
    or per class with ``contents['labels']`` (``(N,)`` class ids), exactly
    as the collector's ``by='sample'`` / ``by='class'`` documents.
    """

    needs = 'pooled'

    def __init__(self, coe: float = 0.0, member_norm: str = 'max'):
        if member_norm not in ('max', 'none'):
            raise ValueError(f"cdp: member_norm must be 'max' or 'none', got "
                             f'{member_norm!r}')
        self.coe = coe
        self.member_norm = member_norm

    def __call__(self, graph, model: nn.Module,
                 contents: dict[str, Any] | None = None
                 ) -> dict[str, torch.Tensor]:
        docs_per_layer = self.required_contents(
            graph, model, contents, 'collected features: contents={layer: '
            '(documents, channels)} from FeatureCollector(stats=("pooled",)) '
            'or {layer: (N, C, H, W) feature maps}')
        scores = {}
        for layer, docs in docs_per_layer.items():
            s = cdp_scores(docs, self.coe)
            if self.member_norm == 'max':
                s = s / s.abs().max().clamp(min=_EPS)
            scores[layer] = s
        return scatter_to_spaces(graph, scores, role='out', reduce='sum')
