"""Where a traced size came from, and what a reshape to it ties.

Channel analysis follows ints read from tensor dims (``x.size(1)``,
``B, N, C = x.shape``) into ``view`` / ``reshape`` sizes: a size read from a
dim stays equal to that dim after pruning. A size *computed* from one
(``C // self.num_heads``) follows it too, but in a way no rule models; it is
safe only where the reshaped tensor carries the very channels it was read
from (a channel shuffle splitting its own width). Anywhere else (Swin-V2-CR
and VOLO reshape ``qkv(x)`` with ``C`` of ``x``) the source's channels are
fixed and the size is treated as literal.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

from .slots import FIXED, NONE, compress, varying_dims

__all__ = ['Derived', 'track_size', 'tie_sizes', 'line']

_ARITH = frozenset([operator.floordiv, operator.truediv, operator.mul,
                    operator.add, operator.sub, operator.mod])


@dataclass(frozen=True, eq=False)
class Derived:
    """A size computed from dim ``dim`` of the tensor with slots ``src``."""
    src: torch.Tensor
    dim: int


def track_size(size_prov: dict, n: fx.Node, args, sargs) -> None:
    """Record in ``size_prov`` which tensor dim the int / shape value of node
    ``n`` was read from: ``(slots, dim)``, a list of those for a whole
    shape, or :class:`Derived` for arithmetic on one."""
    prov: Any = None
    if n.op == 'call_method' and n.target == 'size' and \
            isinstance(args[0], torch.Tensor):
        if len(args) > 1 or 'dim' in n.kwargs:
            d = args[1] if len(args) > 1 else n.kwargs['dim']
            prov = (sargs[0], d % args[0].ndim)
        else:
            prov = [(sargs[0], i) for i in range(args[0].ndim)]
    elif n.op == 'call_function' and n.target is getattr and \
            len(args) > 1 and args[1] == 'shape' and \
            isinstance(args[0], torch.Tensor):
        prov = [(sargs[0], i) for i in range(args[0].ndim)]
    elif n.op == 'call_function' and n.target is operator.getitem and \
            isinstance(n.args[0], fx.Node) and \
            isinstance(size_prov.get(n.args[0]), list) and \
            isinstance(args[1], int):
        prov = size_prov[n.args[0]][args[1]]
    elif n.op == 'call_function' and n.target in _ARITH:
        for a in n.args:
            p = size_prov.get(a) if isinstance(a, fx.Node) else None
            if isinstance(p, tuple) and isinstance(p[0], torch.Tensor):
                prov = Derived(*p)
            elif isinstance(p, Derived):
                prov = p
            if prov is not None:
                break
    if prov is not None:
        size_prov[n] = prov


def tie_sizes(ctx, res: torch.Tensor, sizes, source: Any) -> set[int]:
    """Tie each dim of reshape result ``res`` whose size was read from
    another tensor's dim to that dim (position-wise; fixed when one side
    cannot shrink).

    Args:
        ctx: The analysis context (``union``, ``size_prov``).
        res: Slots of the reshape's output.
        sizes: The reshape's size arguments (FX nodes or ints).
        source: Slots of the reshaped tensor.

    Returns:
        Dims of ``res`` whose computed size must be treated as literal.
    """
    literal: set[int] = set()
    if sizes is None or isinstance(sizes, fx.Node):
        return literal
    prov_map = getattr(ctx, 'size_prov', {})
    for d, v in enumerate(sizes):
        if not isinstance(v, fx.Node) or v not in prov_map:
            continue
        prov = prov_map[v]
        if isinstance(prov, Derived):
            if d < res.ndim and not _carries(ctx, source, prov):
                b = line(ctx, prov.src, prov.dim)
                if b.numel() > 1:
                    ctx.union.fix(b)
                literal.add(d)
            continue
        if not isinstance(prov, tuple) or d >= res.ndim or \
                not isinstance(prov[0], torch.Tensor):
            continue
        src, i = prov
        a = line(ctx, res, d)
        b = line(ctx, src, i)
        if a.numel() == b.numel():
            # unless the same channels (e.g. after a shuffle): sizes agree
            if a.numel() > 1 and not torch.equal(torch.sort(a).values,
                                                 torch.sort(b).values):
                ctx.union.union_tensors(a, b)
            continue
        # one side is constant along its dim: it cannot follow pruning
        for ln, const in ((a, b), (b, a)):
            if ln.numel() > 1 and const.numel() == 1:
                if int(const) >= 0:
                    ctx.union.union_tensors(ln, const)
                else:
                    ctx.union.fix(ln)
    return literal


def _carries(ctx, source: Any, prov: Derived) -> bool:
    """Whether the reshaped tensor holds the channels the size was computed
    from (or the source dim carries none: a spatial or batch size)."""
    b = line(ctx, prov.src, prov.dim)
    if b.numel() == 1:
        return True
    if not isinstance(source, torch.Tensor):
        return False
    have = set(compress(ctx.union.canon(source)).reshape(-1).tolist())
    return set(b.tolist()) <= have


def line(ctx, s: torch.Tensor, dim: int) -> torch.Tensor:
    """Slots of ``s`` along ``dim``; one entry when the dim carries no
    channels (its slot if ``s`` is constant, else NONE). Fixes ``s`` if its
    slots vary along ``dim`` and other dims at once."""
    s = compress(ctx.union.canon(s))
    dim = dim % s.ndim
    var = varying_dims(s)
    if dim not in var:
        value = int(s.reshape(-1)[0]) if not var else NONE
        return torch.full((1,), value, dtype=torch.long)
    if len(var) > 1:
        ctx.union.fix(s)
        return torch.full((1,), FIXED, dtype=torch.long)
    return s.reshape(-1)
