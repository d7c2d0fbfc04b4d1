"""Structural patterns in traced graphs, shared by analysis and transforms."""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from torch import fx, nn

__all__ = ['conv_bn_pairs', 'is_plain_bn']

_FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def is_plain_bn(module) -> bool:
    """A BatchNorm whose forward is torch's own: folding it into the conv
    before it is exact. A subclass with its own forward (timm's
    ``BatchNormAct2d`` applies an activation) is not foldable."""
    bn = nn.modules.batchnorm._BatchNorm
    return isinstance(module, bn) and type(module).forward in (
        bn.forward, nn.SyncBatchNorm.forward)


def conv_bn_pairs(gm: fx.GraphModule,
                  ndim: Callable[[fx.Node], int | None]
                  ) -> list[tuple[str, str]]:
    """``(conv or linear, bn)`` module names where the BN can be folded.

    A pair qualifies when the BN directly follows the layer, the layer's
    output feeds nothing else, and both modules are called exactly once (a
    shared module cannot hold one folded copy for several call sites).
    ``Linear`` + BN qualifies only on 2-D ``(batch, features)`` outputs:
    on ``(N, L, C)`` a ``BatchNorm1d`` normalises over ``L``, not the
    linear's outputs.

    Args:
        gm: A traced graph module.
        ndim: Output rank of a node, or None when unknown (then Linear
            pairs are skipped).
    """
    mods = dict(gm.named_modules())
    calls = Counter(n.target for n in gm.graph.nodes if n.op == 'call_module')
    pairs = []
    for n in gm.graph.nodes:
        if n.op != 'call_module' or not is_plain_bn(mods.get(n.target)):
            continue
        src = n.args[0]
        if not (isinstance(src, fx.Node) and src.op == 'call_module' and
                isinstance(mods.get(src.target), _FOLDABLE) and
                len(src.users) == 1 and calls[src.target] == 1 and
                calls[n.target] == 1):
            continue
        if isinstance(mods[src.target], nn.Linear) and ndim(src) != 2:
            continue
        pairs.append((src.target, n.target))
    return pairs
