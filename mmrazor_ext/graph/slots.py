"""Channel slots: the union-find the dependency analysis is built on.

Every channel position of every tensor in the traced graph is described by a
*slot tensor* ``S`` of the same ndim as the real tensor, each dim either of
the real size or 1 (broadcast). An entry is a slot id (>= 0) or ``NONE``
(-1, "carries no channel", e.g. a per-sample scalar). Slots that must be
dropped together are unioned; slot ``FIXED`` (0) is the root of everything
that may never be pruned (network inputs and outputs, ignored layers,
channels mixed by an op without a pruning rule).
"""
from __future__ import annotations

import torch

FIXED = 0
NONE = -1
# above this many entries canon() dedups first (expanded slot tensors)
_CANON_LIST_MAX = 512


class SlotUnion:
    """Union-find over integer slot ids; slot 0 is ``FIXED``."""

    def __init__(self):
        self.parent: list[int] = [FIXED]

    def __len__(self) -> int:
        return len(self.parent)

    def new(self, n: int) -> torch.Tensor:
        """Allocate ``n`` fresh slots; returns their ids as a 1-D tensor."""
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return torch.arange(start, start + n, dtype=torch.long)

    def find(self, x: int) -> int:
        p = self.parent
        root = x
        while p[root] != root:
            root = p[root]
        while p[x] != root:  # path compression
            p[x], x = root, p[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            # the smaller id wins: FIXED stays the root of its set and
            # roots are the earliest-created slot (deterministic names)
            if ra < rb:
                self.parent[rb] = ra
            else:
                self.parent[ra] = rb

    def canon(self, s: torch.Tensor) -> torch.Tensor:
        """Replace each slot id by its current root (NONE stays NONE)."""
        n = s.numel()
        if n == 0:
            return s
        find = self.find
        if n <= _CANON_LIST_MAX:
            # compressed slot tensors are small: a plain list pass is several
            # times cheaper than unique + gather
            return torch.tensor([find(v) if v >= 0 else NONE
                                 for v in s.reshape(-1).tolist()],
                                dtype=torch.long).reshape(s.shape)
        u, inv = torch.unique(s, return_inverse=True)
        roots = torch.tensor([find(v) if v >= 0 else NONE
                              for v in u.tolist()], dtype=torch.long)
        return roots[inv].reshape(s.shape)

    def roots(self) -> torch.Tensor:
        """Root of every slot id, as one tensor (vectorised find).

        Pointer jumping (``p = p[p]``) halves every path per step, so it
        needs O(log depth) tensor ops instead of one Python ``find`` per
        slot; the roots are the same ones :meth:`find` returns.
        """
        p = torch.tensor(self.parent, dtype=torch.long)
        while True:
            q = p[p]
            if torch.equal(q, p):
                return p
            p = q

    def union_tensors(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Union ``a`` and ``b`` element-wise after broadcasting."""
        a, b = torch.broadcast_tensors(a, b)
        m = (a >= 0) & (b >= 0) & (a != b)
        if not bool(m.any()):
            return
        # unique pairs via one int64 key (much faster than unique(dim=0))
        n = len(self.parent)
        keys = torch.unique(a[m] * n + b[m])
        union = self.union
        for x, y in zip((keys // n).tolist(), (keys % n).tolist()):
            union(x, y)

    def fix(self, s: torch.Tensor | None) -> None:
        """Make every slot in ``s`` unprunable."""
        if s is None:
            return
        for v in torch.unique(s[s >= 0]).tolist():
            self.union(v, FIXED)

    def is_fixed(self, x: int) -> bool:
        return self.find(x) == FIXED


def compress(s: torch.Tensor) -> torch.Tensor:
    """Collapse every dim along which ``s`` is constant to size 1."""
    # largest dims first: collapsing them shrinks the tensor the most
    for d in sorted(range(s.ndim), key=lambda i: -s.shape[i]):
        if s.shape[d] > 1:
            first = s.narrow(d, 0, 1)
            if torch.equal(s, first.expand_as(s)):
                s = first
    return s.contiguous()


def varying_dims(s: torch.Tensor) -> list[int]:
    """Dims along which a compressed slot tensor varies."""
    return [d for d in range(s.ndim) if s.shape[d] > 1]


def full_like_shape(ndim: int, value: int) -> torch.Tensor:
    """A broadcastable slot tensor with one value."""
    return torch.full((1,) * ndim, value, dtype=torch.long)


def channel_slots(union: SlotUnion, s: torch.Tensor, dim: int,
                  size: int) -> torch.Tensor:
    """The 1-D slot list of channel dim ``dim`` (length ``size``).

    If the slots also vary along other dims (a channel does not map to one
    position), the channels cannot be pruned: they are fixed.
    """
    s = compress(union.canon(s))
    dim = dim % s.ndim
    if any(d != dim for d in varying_dims(s)):
        union.fix(s)
        return torch.full((size,), FIXED, dtype=torch.long)
    out = s.reshape(-1) if s.shape[dim] > 1 else s.reshape(-1).expand(size)
    # a channel input with no slot information is treated as fixed
    return torch.where(out >= 0, out, torch.full_like(out, FIXED)).clone()


# -- slot structures (the slots of a tuple / list output mirror its shape) --
def fixed_like(out):
    """Slots of ``out`` with every channel fixed (same nesting as ``out``)."""
    if isinstance(out, torch.Tensor):
        return full_like_shape(out.ndim, FIXED)
    if isinstance(out, (tuple, list)):
        # named tuples (e.g. torch.return_types) become plain tuples
        return type(out)(fixed_like(o) for o in out) \
            if not hasattr(out, '_fields') else tuple(fixed_like(o)
                                                      for o in out)
    return None


def flat_slots(x):
    """Every slot tensor inside a nested tuple / list / dict."""
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, (tuple, list)):
        for y in x:
            yield from flat_slots(y)
    elif isinstance(x, dict):
        for y in x.values():
            yield from flat_slots(y)


def expand_slots(s, real):
    """Slots ``s`` broadcast to the full shape of the real value ``real``."""
    if isinstance(real, torch.Tensor):
        if not isinstance(s, torch.Tensor):
            s = full_like_shape(real.ndim, FIXED)
        if s.ndim != real.ndim:
            s = s.reshape((1,) * (real.ndim - s.ndim) + tuple(s.shape))
        return s.expand(real.shape).contiguous()
    if isinstance(real, (tuple, list)) and isinstance(s, (tuple, list)):
        return type(real)(expand_slots(a, b) for a, b in zip(s, real))
    return real


def compress_all(x):
    """:func:`compress` every slot tensor of a nested tuple / list."""
    if isinstance(x, torch.Tensor):
        return compress(x)
    if isinstance(x, (tuple, list)):
        return tuple(compress_all(y) for y in x)
    return None
