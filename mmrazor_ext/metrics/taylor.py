"""First-order Taylor importance (Molchanov et al., CVPR 2019)."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from mmrazor_ext.registry import METRICS

from .base import ChannelMetric, scatter_to_spaces


class TaylorAccumulator:
    """Accumulates ``sum over batches of |sum_filter w * dL/dw|`` per channel.

    Call :meth:`update` after each ``loss.backward()`` (gradients are read,
    not cleared) or :meth:`run` with batches and a loss function.

    Args:
        graph: The channel graph; scores cover its producer layers.
        model: The model whose ``.grad`` fields are read.
    """

    def __init__(self, graph, model: nn.Module):
        self.model = model
        self.layers = [n for n, r in graph.layers.items() if r.producer]
        self.sums: dict[str, torch.Tensor] = {}
        self.num_batches = 0

    @torch.no_grad()
    def update(self) -> None:
        """Add the current gradients' contribution (one batch)."""
        for name in self.layers:
            w = self.model.get_submodule(name).weight
            if w.grad is None:
                continue
            contrib = (w * w.grad).reshape(w.shape[0], -1).sum(1).abs()
            self.sums[name] = self.sums.get(name, 0) + contrib.detach().cpu()
        self.num_batches += 1

    def run(self, batches: Iterable, loss_fn: Callable[[Any], torch.Tensor]
            ) -> dict[str, torch.Tensor]:
        """Backward ``loss_fn(batch)`` for each batch and accumulate."""
        for batch in batches:
            self.model.zero_grad(set_to_none=True)
            loss_fn(batch).backward()
            self.update()
        self.model.zero_grad(set_to_none=True)
        return self.scores()

    def scores(self) -> dict[str, torch.Tensor]:
        """``{layer: (channels,)}`` mean contribution per batch."""
        if not self.num_batches:
            raise RuntimeError('TaylorAccumulator: no batch accumulated yet')
        return {k: v / self.num_batches for k, v in self.sums.items()}


@METRICS.register_module('taylor')
class TaylorMetric(ChannelMetric):
    """Score of a unit = sum over producers of the accumulated first-order
    Taylor estimate of the loss change when removing the filter.

    ``contents``: ``{producer layer: (channels,)}`` from
    :meth:`TaylorAccumulator.scores`; ``None`` reads the gradients currently
    stored in the model (one batch).
    """

    needs = 'gradients'

    def __call__(self, graph, model: nn.Module,
                 contents: dict[str, Any] | None = None
                 ) -> dict[str, torch.Tensor]:
        if not contents:
            acc = TaylorAccumulator(graph, model)
            acc.update()
            if not acc.sums:
                raise ValueError('taylor: no gradients in the model; run a '
                                 'backward pass or pass TaylorAccumulator '
                                 'scores as contents')
            contents = acc.scores()
        scores = {k: torch.as_tensor(v).float()
                  for k, v in self.check_contents(graph, contents).items()}
        for k, s in scores.items():
            scores[k] = s / s.max().clamp(min=1e-12)
        return scatter_to_spaces(graph, scores, role='out', reduce='sum')
