"""Feature-map reconstruction importance (ThiNet / AMC "fm-reconstruction").

A channel is unimportant when the next layer can do without it: removing a
set T of input channels of a consumer changes its output by the sum of
their contributions, so ThiNet greedily removes the channel that keeps
``|| sum_{j in T} y_j ||^2`` smallest over sampled output points. That only
needs the Gram matrix ``G_ij = sum_points <y_i, y_j>`` of per-input-channel
contributions, which is accumulated batch by batch (running statistic) at
``n_points_per_fm`` random positions per feature map. The removal order is
the score (removed last = most important); a space sums its consumers'.
AMC's least-squares weight update for the kept channels is
:func:`least_squares_weights`.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmrazor_ext.registry import METRICS

from .base import ChannelMetric, scatter_to_spaces

__all__ = ['FMReconstructionCollector', 'FMReconstructionMetric',
           'greedy_removal_order', 'least_squares_weights']


def _consumers(graph, model) -> list[str]:
    """Dense conv / linear layers whose input channels are prunable."""
    res = []
    for name, rec in graph.layers.items():
        if rec.kind not in ('conv', 'linear') or \
                not graph.channel_map(name, 'in'):
            continue
        if getattr(model.get_submodule(name), 'groups', 1) != 1:
            continue  # grouped/depthwise inputs are tied to their outputs
        res.append(name)
    return res


def _patches(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, C_in, K, L) input patches of ``mod`` (K kernel taps, L places)."""
    if isinstance(mod, nn.Linear):
        x = x.reshape(-1, x.shape[-1])
        return x[:, :, None, None]
    cols = F.unfold(x, mod.kernel_size, dilation=mod.dilation,
                    padding=mod.padding, stride=mod.stride)
    b, _, n = cols.shape
    return cols.reshape(b, x.shape[1], -1, n)


class FMReconstructionCollector:
    """Accumulates contribution Gram matrices of consumer layers.

    Args:
        graph: The channel graph.
        model: The model (hooks go on its consumer modules).
        n_points_per_fm: Sampled output positions per feature map.
        seed: Seed of the position sampling.
        chunk: Points processed at once (bounds memory).
    """

    def __init__(self, graph, model: nn.Module, n_points_per_fm: int = 10,
                 seed: int = 0, chunk: int = 256):
        self.model = model
        self.layers = _consumers(graph, model)
        self.n_points = int(n_points_per_fm)
        self.chunk = int(chunk)
        self.gen = torch.Generator().manual_seed(seed)
        self.gram: dict[str, torch.Tensor] = {}
        self.points: dict[str, int] = {}

    def _hook(self, name):
        def fn(mod, args):
            x = args[0].detach().float()
            cols = _patches(mod, x)                      # (B, C, K, L)
            b, c, k, n = cols.shape
            idx = torch.randint(0, n, (b, min(self.n_points, n)),
                                generator=self.gen)
            pts = torch.stack([cols[i][:, :, idx[i]] for i in range(b)])
            pts = pts.permute(0, 3, 1, 2).reshape(-1, c, k)   # (P, C, K)
            w = mod.weight.detach().float().reshape(mod.weight.shape[0], c, k)
            g = self.gram.setdefault(name, torch.zeros(c, c))
            for s in range(0, pts.shape[0], self.chunk):
                y = torch.einsum('pck,ock->poc', pts[s:s + self.chunk], w)
                g += torch.einsum('poc,pod->cd', y, y).cpu()
            self.points[name] = self.points.get(name, 0) + pts.shape[0]
        return fn

    @torch.no_grad()
    def collect(self, batches: Iterable, forward=None) -> dict[str, torch.Tensor]:
        """Run ``batches`` (input tensors) through the model in eval mode."""
        handles = [self.model.get_submodule(n).register_forward_pre_hook(
            self._hook(n)) for n in self.layers]
        training = self.model.training
        self.model.eval()
        try:
            for x in batches:
                forward(self.model, x) if forward else self.model(x)
        finally:
            self.model.train(training)
            for h in handles:
                h.remove()
        return self.gram


def greedy_removal_order(gram: torch.Tensor) -> torch.Tensor:
    """ThiNet's greedy order: indices from first to last removed."""
    c = gram.shape[0]
    g = gram.double()
    removed = torch.zeros(c, dtype=torch.bool)
    cross = torch.zeros(c, dtype=torch.float64)  # sum_{j in T} G_cj
    order = []
    for _ in range(c):
        cost = 2 * cross + g.diagonal()
        cost[removed] = float('inf')
        j = int(torch.argmin(cost))
        order.append(j)
        removed[j] = True
        cross += g[:, j]
    return torch.tensor(order)


def least_squares_weights(x: torch.Tensor, y: torch.Tensor,
                          keep: torch.Tensor) -> torch.Tensor:
    """Weights on kept input channels that best reproduce ``y`` (AMC).

    Args:
        x: (P, C, K) sampled input patches.
        y: (P, O) outputs of the unpruned layer at those points.
        keep: (C,) bool mask of kept input channels.

    Returns:
        (O, C_kept, K) weights minimising ``||y - x_kept w||``.
    """
    xk = x[:, keep].reshape(x.shape[0], -1)
    sol = torch.linalg.lstsq(xk.double(), y.double()).solution  # (C_k*K, O)
    return sol.t().reshape(y.shape[1], int(keep.sum()), -1).float()


@METRICS.register_module('fm_reconstruction')
class FMReconstructionMetric(ChannelMetric):
    """Score of a unit from ThiNet's greedy removal order at each consumer.

    ``contents``: ``{consumer layer: (C_in, C_in) Gram matrix}`` from
    :class:`FMReconstructionCollector`. Scores are ranks scaled to [0, 1]
    (1 = removed last), summed over a space's consumers.
    """

    requires_features = True

    def __call__(self, graph, model: nn.Module,
                 contents: dict[str, Any] | None = None
                 ) -> dict[str, torch.Tensor]:
        if not contents:
            raise ValueError('fm_reconstruction needs contents={consumer '
                             'layer: Gram matrix} from '
                             'FMReconstructionCollector(...).collect(batches)')
        unknown = set(contents) - set(graph.layers)
        if unknown:
            raise KeyError(f'fm_reconstruction: unknown layers in contents: '
                           f'{sorted(unknown)}')
        scores = {}
        for layer, gram in contents.items():
            order = greedy_removal_order(torch.as_tensor(gram))
            rank = torch.empty(len(order))
            rank[order] = torch.arange(len(order), dtype=torch.float32)
            scores[layer] = rank / max(len(order) - 1, 1)
        return scatter_to_spaces(graph, scores, role='in', reduce='sum')
