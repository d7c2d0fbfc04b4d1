"""Data-free block importance from the weights of its residual branch.

The branch output of a ResNet block is scaled by its last normalisation
layer, so the mean ``|gamma|`` of that layer (zero-initialised in
mmpretrain's ResNets) bounds how much the block adds; without a
normalisation layer the RMS of the last conv / linear weight is used. With
``reduce='mean'`` the score is instead the mean RMS of all branch conv /
linear weights.
"""
from __future__ import annotations

from torch import nn

from mmrazor_ext.registry import METRICS

from .block_base import LayerMetric

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@METRICS.register_module('block_weight_norm')
class BlockWeightNormMetric(LayerMetric):
    """Weight-based importance of each block's residual branch.

    Args:
        reduce: ``'last'`` (mean |gamma| of the branch's last normalisation
            layer, else RMS of its last weighted layer) or ``'mean'`` (mean
            RMS of all branch conv / linear weights).
    """

    def __init__(self, reduce: str = 'last'):
        if reduce not in ('last', 'mean'):
            raise ValueError(f"block_weight_norm: reduce must be 'last' or "
                             f"'mean', got {reduce!r}")
        self.reduce = reduce

    def __call__(self, blocks, model: nn.Module,
                 contents: dict | None = None) -> dict[str, float]:
        scores = {}
        for name, info in blocks.blocks.items():
            # graph order of the branch modules (branch_modules is sorted)
            order = [n.target for n in blocks.gm.graph.nodes
                     if n.op == 'call_module' and n.target in
                     set(info.branch_modules)]
            mods = [(n, model.get_submodule(n)) for n in order]
            weighted = [m for _, m in mods if isinstance(m, _WEIGHTED)]
            norms = [m for _, m in mods if isinstance(m, _NORMS)
                     and getattr(m, 'weight', None) is not None]
            if not weighted:
                scores[name] = 0.0
                continue
            if self.reduce == 'mean':
                scores[name] = sum(_rms(m.weight) for m in weighted) / len(
                    weighted)
            elif norms:
                scores[name] = float(norms[-1].weight.detach().abs().mean())
            else:
                scores[name] = _rms(weighted[-1].weight)
        return scores


def _rms(w) -> float:
    return float(w.detach().float().pow(2).mean().sqrt())
