"""Feature-map reconstruction importance (ThiNet / AMC "fm-reconstruction").

A channel is unimportant when the next layer can do without it: removing a
set T of input channels of a consumer changes its output by the sum of
their contributions, so ThiNet greedily removes the channel that keeps
``|| sum_{j in T} y_j ||^2`` smallest over sampled output points. That only
needs the Gram matrix ``G_ij = sum_points <y_i, y_j>`` of per-input-channel
contributions (:func:`contribution_gram`), which is accumulated batch by
batch (running statistic) at ``n_points_per_fm`` random positions per
feature map. The removal order is the score (removed last = most
important); a space sums its consumers'. AMC's least-squares weight update
for the kept channels needs the sampled input patches themselves, which
:class:`FMReconstructionCollector` keeps when asked (``keep_points=True``);
the solve itself is the pruners' one
(:func:`mmrazor_ext.pruners.solve_consumer`, shared with
:meth:`ChannelPruner.reconstruct`), which metrics/ may not import.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmrazor_ext.registry import METRICS

from .base import ChannelMetric, scatter_to_spaces
from .feature_stats import FeatureLayout, register_feature_rule

__all__ = ['FMReconstructionCollector', 'FMReconstructionMetric',
           'contribution_gram', 'fm_consumers', 'gram_from_inputs',
           'greedy_removal_order',
           'input_patches', 'layer_weight3', 'least_squares_weights']


def fm_consumers(graph, model: nn.Module) -> list[str]:
    """Dense conv / linear layers whose input channels are prunable.

    Grouped / depthwise layers are left out: their input channels are tied
    to their output channels, so there is nothing to reconstruct.
    """
    res = []
    for name, rec in graph.layers.items():
        if rec.kind not in ('conv', 'linear') or \
                not graph.channel_map(name, 'in'):
            continue
        if getattr(model.get_submodule(name), 'groups', 1) != 1:
            continue
        res.append(name)
    return res


def input_patches(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, C_in, K, L) input patches of ``mod`` (K kernel taps, L places)."""
    if isinstance(mod, nn.Linear):
        x = x.reshape(-1, x.shape[-1])
        return x[:, :, None, None]
    cols = F.unfold(x, mod.kernel_size, dilation=mod.dilation,
                    padding=mod.padding, stride=mod.stride)
    b, _, n = cols.shape
    return cols.reshape(b, x.shape[1], -1, n)


def layer_weight3(mod: nn.Module) -> torch.Tensor:
    """Weight of a dense conv / linear layer as (O, C, K), float."""
    w = mod.weight.detach()
    return w.reshape(w.shape[0], w.shape[1], -1).float()


def contribution_gram(x: torch.Tensor, w: torch.Tensor,
                      chunk: int = 256) -> torch.Tensor:
    """Gram matrix of the per-input-channel output contributions.

    Args:
        x: (P, C, K) sampled input patches.
        w: (O, C, K) weights of the consumer.
        chunk: Points processed at once (bounds the (chunk, O, C) buffer).

    Returns:
        (C, C) float64 ``G_cd = sum_p <y_pc, y_pd>`` with ``y_pc`` the
        output of channel ``c`` alone at point ``p``, on the CPU.
    """
    g = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64)
    w = w.to(x.device, torch.float32)
    for s in range(0, x.shape[0], chunk):
        y = torch.einsum('pck,ock->poc', x[s:s + chunk].float(), w)
        # float32 products, float64 running sum: long runs stay accurate
        g += torch.einsum('poc,pod->cd', y, y).double().cpu()
    return g


class FMReconstructionCollector:
    """Samples consumer input patches and accumulates their Gram matrices.

    One forward pre-hook per consumer draws ``n_points_per_fm`` random
    positions per sample and feature map, adds the points' contribution
    Gram matrix to ``gram`` and, with ``keep_points``, keeps the points
    (CPU) for AMC's least-squares reconstruction.

    Args:
        graph: The channel graph.
        model: The model (hooks go on its consumer modules).
        n_points_per_fm: Sampled output positions per feature map.
        seed: Seed of the position sampling.
        chunk: Points processed at once (bounds memory).
        layers: Consumers to hook (default :func:`fm_consumers`).
        max_points: Cap of points per consumer: an int, a function
            ``max_points(layer name) -> int`` or None (no cap). Points
            beyond the cap are dropped (the Gram matrix only has the kept
            ones).
        keep_points: Keep the sampled patches (:meth:`features`).
    """

    def __init__(self, graph, model: nn.Module, n_points_per_fm: int = 10,
                 seed: int = 0, chunk: int = 256,
                 layers: Iterable[str] | None = None,
                 max_points: int | Callable[[str], int] | None = None,
                 keep_points: bool = False):
        self.model = model
        self.layers = fm_consumers(graph, model) if layers is None \
            else list(layers)
        self.n_points = int(n_points_per_fm)
        self.chunk = int(chunk)
        self.gen = torch.Generator().manual_seed(seed)
        if max_points is None or callable(max_points):
            self.max_points = max_points
        else:
            cap = int(max_points)
            self.max_points = lambda name: cap
        self.keep_points = bool(keep_points)
        self.gram: dict[str, torch.Tensor] = {}
        self.points: dict[str, int] = {}
        self._kept: dict[str, list[torch.Tensor]] = {}

    def _room(self, name: str) -> int | None:
        if self.max_points is None:
            return None
        return self.max_points(name) - self.points.get(name, 0)

    def _hook(self, name):
        @torch.no_grad()
        def fn(mod, args):
            room = self._room(name)
            if room is not None and room <= 0:
                return
            cols = input_patches(mod, args[0].detach().float())  # (B,C,K,L)
            b, c, k, n = cols.shape
            idx = torch.randint(0, n, (b, min(self.n_points, n)),
                                generator=self.gen).to(cols.device)
            rows = torch.arange(b, device=cols.device)[:, None]
            pts = cols[rows, :, :, idx].reshape(-1, c, k)        # (P, C, K)
            if room is not None:
                pts = pts[:room]
            g = contribution_gram(pts, layer_weight3(mod), self.chunk)
            if name in self.gram:
                self.gram[name] += g
            else:
                self.gram[name] = g
            self.points[name] = self.points.get(name, 0) + pts.shape[0]
            if self.keep_points:
                self._kept.setdefault(name, []).append(pts.cpu())
        return fn

    def run(self, fn: Callable[[nn.Module], Any]) -> Any:
        """Call ``fn(model)`` with the hooks installed; returns its result.

        The model's mode is left to ``fn`` (e.g. a validation function).
        """
        handles = [self.model.get_submodule(n).register_forward_pre_hook(
            self._hook(n)) for n in self.layers]
        try:
            return fn(self.model)
        finally:
            for h in handles:
                h.remove()

    @torch.no_grad()
    def collect(self, batches: Iterable, forward=None
                ) -> dict[str, torch.Tensor]:
        """Run ``batches`` (input tensors) through the model in eval mode.

        Returns:
            ``{consumer: (C, C) float64 Gram matrix}`` (also ``self.gram``).
        """
        def run(model):
            training = model.training
            model.eval()
            try:
                for x in batches:
                    forward(model, x) if forward else model(x)
            finally:
                model.train(training)
        self.run(run)
        return self.gram

    def features(self) -> dict[str, torch.Tensor]:
        """``{consumer: (P, C, K) sampled input patches}`` (``keep_points``)."""
        if not self.keep_points:
            raise RuntimeError('FMReconstructionCollector: features() needs '
                               'keep_points=True')
        return {n: torch.cat(p) for n, p in self._kept.items() if p}


_DENSE_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _accepted_gram(layout: FeatureLayout) -> str:
    c = layout.channels
    return (f'({c}, {c}) Gram matrix from FMReconstructionCollector, or '
            f'{layout.describe()} input feature maps of the consumer')


@register_feature_rule('fm_gram', _accepted_gram, role='in')
def gram_from_inputs(value: torch.Tensor, layout: FeatureLayout,
                     labels: torch.Tensor | None = None
                     ) -> torch.Tensor | None:
    """A consumer's contents entry as its contribution Gram matrix.

    A ``(C, C)`` symmetric matrix is taken as the Gram matrix itself. Raw
    input maps of the consumer (``(N, C, H, W)`` for a conv, ``(N, C)`` /
    ``(N, L, C)`` for a linear layer) give the Gram matrix over every
    output position (:func:`contribution_gram` of all input patches with
    the layer's current weight), not a random sample of them.

    Args:
        value: The contents entry.
        layout: Input layout of the consumer (``module`` set).
        labels: Unused.

    Returns:
        ``(C, C)`` Gram matrix, or None when ``value`` fits no shape.

    Raises:
        ValueError: Raw maps for a layer that is not a dense conv / linear.
    """
    c = layout.channels
    if value.ndim == 2 and tuple(value.shape) == (c, c) and (
            layout.channel_dim == 1 or torch.allclose(value, value.t())):
        return value
    if not layout.fits(value):
        return None
    mod = layout.module
    if not isinstance(mod, _DENSE_TYPES) or getattr(mod, 'groups', 1) != 1:
        raise ValueError(
            'input feature maps give a Gram matrix only for a dense conv / '
            f'linear consumer, not {type(mod).__name__}; pass its (C, C) '
            'Gram matrix from FMReconstructionCollector instead')
    cols = input_patches(mod, value.float())              # (B, C, K, L)
    pts = cols.permute(0, 3, 1, 2).reshape(-1, c, cols.shape[2])
    return contribution_gram(pts, layer_weight3(mod))


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
    """Plain least-squares weights on kept input channels (a reference
    formula kept for the public API; AMC and :meth:`ChannelPruner.reconstruct`
    refit with :func:`mmrazor_ext.pruners.solve_consumer` instead).

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
    :class:`FMReconstructionCollector`, or the consumer's raw input feature
    maps (:func:`gram_from_inputs`; keyed by the consumer, not the
    producer). Scores are ranks scaled to [0, 1]
    (1 = removed last), summed over a space's consumers.
    """

    needs = 'fm_gram'

    def __call__(self, graph, model: nn.Module,
                 contents: dict[str, Any] | None = None
                 ) -> dict[str, torch.Tensor]:
        if not contents:
            raise ValueError('fm_reconstruction needs contents={consumer '
                             'layer: Gram matrix} from '
                             'FMReconstructionCollector(...).collect(batches) '
                             'or {consumer layer: its input feature maps}')
        scores = {}
        for layer, gram in self.prepare_contents(graph, model,
                                                 contents).items():
            order = greedy_removal_order(gram)
            rank = torch.empty(len(order))
            rank[order] = torch.arange(len(order), dtype=torch.float32)
            scores[layer] = rank / max(len(order) - 1, 1)
        return scatter_to_spaces(graph, scores, role='in', reduce='sum')
