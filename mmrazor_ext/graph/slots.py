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

from array import array

import torch

FIXED = 0
NONE = -1
# above this many entries canon() dedups first (expanded slot tensors)
_CANON_LIST_MAX = 512
# up to this many element pairs union_tensors loops in Python (no dedup)
_UNION_LIST_MAX = 4096


def long_tensor(values: list[int]) -> torch.Tensor:
    """``torch.tensor(values, dtype=torch.long)``, several times faster
    for the lists the analysis makes (through a packed int64 buffer)."""
    if not values:
        return torch.empty(0, dtype=torch.long)
    return torch.frombuffer(array('q', values), dtype=torch.long)


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
        if n <= _CANON_LIST_MAX:
            # compressed slot tensors are small: a plain list pass is several
            # times cheaper than unique + gather
            return long_tensor(self.canon_list(
                s.reshape(-1).tolist())).reshape(s.shape)
        u, inv = torch.unique(s, return_inverse=True)
        return long_tensor(self.canon_list(u.tolist()))[inv].reshape(s.shape)

    def canon_list(self, values: list[int]) -> list[int]:
        """:meth:`canon` of a list of slot ids (most are roots already:
        those skip the ``find`` call)."""
        p, find = self.parent, self.find
        return [NONE if v < 0 else v if p[v] == v else find(v)
                for v in values]

    def roots(self) -> torch.Tensor:
        """Root of every slot id, as one tensor (vectorised find).

        Pointer jumping (``p = p[p]``) halves every path per step, so it
        needs O(log depth) tensor ops instead of one Python ``find`` per
        slot; the roots are the same ones :meth:`find` returns.
        """
        p = long_tensor(self.parent)
        while True:
            q = p[p]
            if torch.equal(q, p):
                return p
            p = q

    def union_tensors(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Union ``a`` and ``b`` element-wise after broadcasting."""
        if a.shape == b.shape and a.numel() <= _UNION_LIST_MAX:
            # the common case (a residual add of two channel vectors): one
            # list pass; the partition (and every root, the smallest id of
            # its set) does not depend on the order of the unions. Inlined
            # union(): most ids are roots already (no find call)
            p, find = self.parent, self.find
            for x, y in zip(a.reshape(-1).tolist(), b.reshape(-1).tolist()):
                if x != y and x >= 0 and y >= 0:
                    rx = x if p[x] == x else find(x)
                    ry = y if p[y] == y else find(y)
                    if rx < ry:
                        p[ry] = rx
                    elif ry < rx:
                        p[rx] = ry
            return
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
        values = set(s.reshape(-1).tolist()) \
            if s.numel() <= _UNION_LIST_MAX else torch.unique(s).tolist()
        union = self.union
        for v in values:
            if v > FIXED:
                union(v, FIXED)

    def is_fixed(self, x: int) -> bool:
        return self.find(x) == FIXED


def group_components(root_lists: list[list[int]]) -> list[int]:
    """Component label per list: lists sharing an id (directly or through
    other lists) get one label (the channel spaces: producers sharing a
    root). ``owner`` maps every id seen to its component and is kept
    current by relabelling the smaller side of a merge, so a list costs set
    operations, not a find per id."""
    owner: dict[int, int] = {}
    ids_of: dict[int, list[int]] = {}
    merged: dict[int, int] = {}  # absorbed component -> absorbing one
    labels = []
    for i, ids in enumerate(root_lists):
        comps = {owner[r] for r in owner.keys() & ids}
        c = max(comps, key=lambda k: len(ids_of[k])) if comps else i
        ids_of.setdefault(c, [])
        for k in comps - {c}:
            moved = ids_of.pop(k)
            ids_of[c].extend(moved)
            owner.update(dict.fromkeys(moved, c))
            merged[k] = c
        new = [r for r in ids if r not in owner]
        ids_of[c].extend(new)
        owner.update(dict.fromkeys(new, c))
        labels.append(c)
    out = []
    for c in labels:
        while c in merged:
            c = merged[c]
        out.append(c)
    return out


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
    shape = s.shape
    dims = [d for d in range(len(shape)) if shape[d] > 1]
    if len(dims) <= 1 and 0 < s.numel() <= _UNION_LIST_MAX:
        # a channel vector (the common case): the same result from one
        # list pass, without compress's tensor ops
        values = union.canon_list(s.reshape(-1).tolist())
        v0 = values[0]
        if any(v != v0 for v in values):
            if dims[0] != dim % len(shape):
                union.fix(long_tensor(values))
                return torch.full((size,), FIXED, dtype=torch.long)
        else:
            values = [v0] * size
        return long_tensor([v if v >= 0 else FIXED for v in values])
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
