"""MACs and parameters of the exported model for a unit mask, without
exporting.

Per layer, the layer kind (:class:`~mmrazor_ext.graph.LayerKind`) says how
pruning shrinks it: dense MACs and weight size scale with the kept fraction
of its output channels, and also with the kept fraction of its input
channels when ``fan_in_pruned(module)`` (dense conv / linear; grouped convs
lose whole groups). Other parameters (bias, norm affine) scale with the
output fraction, free parameters (layer scale, positional embeddings) with
the kept fraction of their channels; ops that are no layer of a kind are
unaffected.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mmrazor_ext.estimators import get_model_complexity
from mmrazor_ext.graph import ChannelGraph, get_layer_kind

__all__ = ['SubnetCost']


class _Fractions:
    """Kept fraction of each layer's channels (one side) for a global unit
    mask, with one ``index_add`` for all layers."""

    def __init__(self, indices: Sequence[torch.Tensor | None],
                 always_kept: int):
        flat, lens = [], []
        for idx in indices:
            idx = torch.tensor([always_kept]) if idx is None else \
                idx.reshape(-1)
            flat.append(idx)
            lens.append(idx.numel())
        self.flat = torch.cat(flat) if flat else torch.zeros(0, dtype=int)
        self.lens = torch.tensor(lens, dtype=torch.float64).clamp(min=1)
        self.seg = torch.repeat_interleave(torch.arange(len(lens)),
                                           torch.tensor(lens, dtype=int))

    def __call__(self, gmask: torch.Tensor) -> torch.Tensor:
        kept = gmask.to(torch.float64)[self.flat]
        total = torch.zeros(self.lens.numel(), dtype=torch.float64)
        return total.index_add_(0, self.seg, kept) / self.lens


class SubnetCost:
    """Exact MACs / parameter counts of pruned versions of a model.

    Args:
        model: The dense model.
        graph: Its channel graph.
        example_inputs: Inputs for the one MACs count of the dense model.
        leaf_modules: Extra tracer leaf modules.

    Attributes:
        total_macs: MACs of the dense model.
        total_params: Parameters of the dense model.
    """

    def __init__(self, model: nn.Module, graph: ChannelGraph,
                 example_inputs: Sequence[torch.Tensor],
                 leaf_modules: Sequence[type | str] = ()):
        res = get_model_complexity(model, example_inputs, per_layer=True,
                                   leaf_modules=leaf_modules)
        self.total_macs = int(res['macs'])
        self.total_params = sum(p.numel() for p in model.parameters())
        always_kept = graph.num_units  # index of the trailing True unit
        macs, m_fan_in, m_recs = [], [], []
        weights, rests, p_fan_in, p_recs = [], [], [], []
        counted = set()  # ids of parameters already in the params model
        for name, rec in graph.layers.items():
            if rec.kind == 'param':
                continue
            try:
                m = model.get_submodule(name)
            except AttributeError:
                continue
            fan_in = get_layer_kind(rec.kind).fan_in_pruned(m)
            if name in res['layers']:
                macs.append(res['layers'][name]['flops'])
                m_fan_in.append(fan_in)
                m_recs.append(rec)
            w = getattr(m, 'weight', None)
            w = w.numel() if isinstance(w, torch.Tensor) else 0
            weights.append(w)
            rests.append(sum(p.numel() for p in m.parameters(recurse=False))
                         - w)
            p_fan_in.append(fan_in)
            p_recs.append(rec)
            counted.update(id(p) for p in m.parameters(recurse=False))
        for name, rec in graph.layers.items():
            # free parameters (layer scale, positional embedding): sliced
            # along their channels, so they keep the kept fraction
            if rec.kind != 'param':
                continue
            try:
                p = model.get_parameter(name)
            except AttributeError:  # a buffer
                continue
            if id(p) in counted:
                continue
            counted.add(id(p))
            weights.append(p.numel())
            rests.append(0)
            p_fan_in.append(False)
            p_recs.append(rec)
        # MACs of ops that pruning does not touch
        self._fixed_macs = float(self.total_macs - sum(macs))
        self._macs = torch.tensor(macs, dtype=torch.float64)
        self._m_fan_in = torch.tensor(m_fan_in, dtype=torch.bool)
        self._m_out = _Fractions([r.out_index for r in m_recs], always_kept)
        self._m_in = _Fractions([r.in_index for r in m_recs], always_kept)
        self._weights = torch.tensor(weights, dtype=torch.float64)
        self._rests = torch.tensor(rests, dtype=torch.float64)
        self._p_fan_in = torch.tensor(p_fan_in, dtype=torch.bool)
        self._p_out = _Fractions([r.out_index for r in p_recs], always_kept)
        self._p_in = _Fractions([r.in_index for r in p_recs], always_kept)

    @staticmethod
    def _scale(out: _Fractions, inp: _Fractions, fan_in: torch.Tensor,
               gmask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(output fraction, weight fraction) per layer."""
        fo = out(gmask)
        fi = torch.where(fan_in, inp(gmask), torch.ones_like(fo))
        return fo, fo * fi

    def macs(self, gmask: torch.Tensor) -> int:
        """MACs of the model exported for the global unit mask ``gmask``
        (``ChannelGraph.global_mask``)."""
        _, frac = self._scale(self._m_out, self._m_in, self._m_fan_in, gmask)
        return int(round(self._fixed_macs + float((self._macs * frac).sum())))

    def params(self, gmask: torch.Tensor) -> int:
        """Parameters of the model exported for ``gmask``."""
        fo, frac = self._scale(self._p_out, self._p_in, self._p_fan_in,
                               gmask)
        removed = (self._weights + self._rests) - (self._weights * frac
                                                   + self._rests * fo)
        return int(round(self.total_params - float(removed.sum())))
