"""Mask generators: turn weights (or scores) into masks.

The mask math lives in plain functions (``magnitude_mask``, ``nm_mask``,
``block_mask`` ...) so schedulers, tools and tests share one definition; the
registered generator classes bind them to the fake-sparse family they serve.
"""
import math
from collections.abc import Sequence

import torch
from torch import nn

from mmrazor_ext.registry import MASK_GENERATORS

from .sparse_modules import dense_weight


# --- mask math ---------------------------------------------------------------
def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep the ``1 - sparsity`` fraction of largest-magnitude weights.

    Args:
        weight: Any tensor.
        sparsity: Fraction of weights to zero, in [0, 1].

    Returns:
        A bool tensor of ``weight``'s shape (True = kept).
    """
    n = weight.numel()
    n_zero = int(round(float(sparsity) * n))
    if n_zero <= 0:
        return torch.ones_like(weight, dtype=torch.bool)
    if n_zero >= n:
        return torch.zeros_like(weight, dtype=torch.bool)
    flat = weight.detach().abs().flatten()
    keep = torch.zeros(n, dtype=torch.bool, device=weight.device)
    keep[torch.topk(flat, n - n_zero, sorted=False).indices] = True
    return keep.view_as(weight)


def _groups_last(weight: torch.Tensor) -> torch.Tensor:
    """(out, in, *k) -> (out, *k, in): input channels become the last dim."""
    if weight.dim() <= 2:
        return weight
    return weight.movedim(1, -1)


def _groups_back(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if like.dim() <= 2:
        return t
    return t.movedim(-1, 1)


def nm_mask(weight: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """N:M mask along the input-channel dimension (NVIDIA's m4n2_1d for 2:4).

    In every group of ``m`` consecutive input-channel weights (same output
    channel and kernel position) the ``n`` largest magnitudes are kept.

    Args:
        weight: ``(out, in)`` or ``(out, in, *kernel)``; ``in % m == 0``.
        n: Weights kept per group.
        m: Group size.

    Returns:
        A bool tensor of ``weight``'s shape.
    """
    w = _groups_last(weight.detach().abs())
    if w.shape[-1] % m:
        raise ValueError(f'input channels {w.shape[-1]} not divisible by {m}')
    groups = w.reshape(-1, m)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, torch.topk(groups, n, dim=1).indices, True)
    return _groups_back(keep.view(w.shape), weight).contiguous()


def nm_compliant(weight: torch.Tensor, n: int = 2, m: int = 4) -> bool:
    """Whether every group of ``m`` input-channel weights has ``>= m - n``
    zeros."""
    w = _groups_last(weight.detach())
    if w.shape[-1] % m:
        return False
    zeros = (w.reshape(-1, m) == 0).sum(dim=1)
    return bool((zeros >= m - n).all())


def nm_eligible(weight_shape: Sequence[int], groups: int = 1) -> bool:
    """NVIDIA ASP's shape rule for 2:4: out % 8 == 0 and in % 16 == 0."""
    out_c, in_c = weight_shape[0], weight_shape[1]
    return groups == 1 and out_c % 8 == 0 and in_c % 16 == 0


def kept_magnitude_nm(weight: torch.Tensor, n: int = 2, m: int = 4) -> float:
    """Sum of |w| an N:M mask keeps (the permutation search objective)."""
    w = _groups_last(weight.detach().abs()).reshape(-1, m)
    return float(torch.topk(w, n, dim=1).values.sum())


def block_grid(weight_shape: Sequence[int], block_in: int = 32,
               block_out: int = 64) -> tuple[int, int]:
    """Number of full (out-block, in-block) tiles of a weight."""
    return weight_shape[0] // block_out, weight_shape[1] // block_in


def block_scores(weight: torch.Tensor, block_in: int = 32,
                 block_out: int = 64) -> torch.Tensor:
    """Mean |w| of every full ``block_out x block_in`` tile (all kernel taps)."""
    nb_o, nb_i = block_grid(weight.shape, block_in, block_out)
    w = weight.detach().abs()[:nb_o * block_out, :nb_i * block_in]
    w = w.reshape(nb_o, block_out, nb_i, block_in, -1)
    return w.mean(dim=(1, 3, 4))


def block_mask(weight: torch.Tensor, sparsity: float, block_in: int = 32,
               block_out: int = 64) -> torch.Tensor:
    """Zero whole aligned tiles of ``block_in`` input channels x ``block_out``
    output filters (Knight's Cin32Cout64), weakest tiles first.

    Only full tiles are candidates; ragged edges stay dense, so every zero
    region is exactly tile-aligned. ``floor(sparsity * n_tiles + 0.5)``
    tiles go, at most ``n_tiles - 1``.

    Args:
        weight: ``(out, in, *kernel)`` or ``(out, in)``.
        sparsity: Target fraction of tiles to zero.
        block_in: Input channels per tile.
        block_out: Output filters per tile.

    Returns:
        A bool tensor of ``weight``'s shape.
    """
    keep = torch.ones_like(weight, dtype=torch.bool)
    nb_o, nb_i = block_grid(weight.shape, block_in, block_out)
    n_tiles = nb_o * nb_i
    # Round half up, but never remove a layer's last tile (a layer with a
    # single tile stays dense below sparsity 1).
    n_zero = min(math.floor(sparsity * n_tiles + 0.5), n_tiles - 1)
    if n_tiles == 0 or n_zero == 0:
        return keep
    scores = block_scores(weight, block_in, block_out).flatten()
    for t in torch.argsort(scores)[:n_zero].tolist():
        bo, bi = divmod(t, nb_i)
        keep[bo * block_out:(bo + 1) * block_out,
             bi * block_in:(bi + 1) * block_in] = False
    return keep


def block_aligned(mask_or_weight: torch.Tensor, block_in: int = 32,
                  block_out: int = 64) -> bool:
    """Whether the zero weights form exactly whole aligned tiles."""
    zero = (mask_or_weight == 0)
    if not zero.any():
        return True
    nb_o, nb_i = block_grid(zero.shape, block_in, block_out)
    tiles = torch.zeros_like(zero)
    for bo in range(nb_o):
        for bi in range(nb_i):
            t = zero[bo * block_out:(bo + 1) * block_out,
                     bi * block_in:(bi + 1) * block_in]
            if t.all():
                tiles[bo * block_out:(bo + 1) * block_out,
                      bi * block_in:(bi + 1) * block_in] = True
    return bool(torch.equal(tiles, zero))


def project_to_budget(scores: list[torch.Tensor], keep: float,
                      iters: int = 40) -> None:
    """Euclidean projection of keep-probabilities onto
    ``{p in [0, 1]^N : sum p = keep}`` in place (bisection on the shift)."""
    with torch.no_grad():
        flat = torch.cat([s.detach().flatten() for s in scores])
        if float(flat.clamp(0, 1).sum()) <= keep:
            for s in scores:
                s.clamp_(0, 1)
            return
        lo, hi = float(flat.min()) - 1.0, float(flat.max())
        for _ in range(iters):
            mid = (lo + hi) / 2
            if float((flat - mid).clamp(0, 1).sum()) > keep:
                lo = mid
            else:
                hi = mid
        for s in scores:
            s.sub_(hi).clamp_(0, 1)


def global_topk_masks(scores: list[torch.Tensor], keep: int) -> list[torch.Tensor]:
    """Bool masks keeping the ``keep`` highest scores over all tensors."""
    flat = torch.cat([s.detach().flatten() for s in scores])
    keep = max(0, min(int(keep), flat.numel()))
    sel = torch.zeros_like(flat, dtype=torch.bool)
    if keep:
        sel[torch.topk(flat, keep, sorted=False).indices] = True
    out, i = [], 0
    for s in scores:
        out.append(sel[i:i + s.numel()].view_as(s))
        i += s.numel()
    return out


# --- registered generators ---------------------------------------------------
@MASK_GENERATORS.register_module()
class NormalMaskGenerator:
    """Masks from weight magnitude (unstructured, N:M or block-structured).

    The scheduler decides *how much* to prune; this class decides *which*
    weights. Used with :class:`FakeSparse`.
    """

    ARGS = {}
    fake_sparse_types = ('FakeSparse',)
    #: scheduler class names that can drive this generator (None: any); a
    #: scheduler checks it when built (``BaseScheduler.__init__``).
    scheduler_types: tuple[str, ...] | None = None

    def magnitude(self, weight, sparsity):
        return magnitude_mask(weight, sparsity)

    def n_m(self, weight, n=2, m=4):
        return nm_mask(weight, n, m)

    def block(self, weight, sparsity, block_in=32, block_out=64):
        return block_mask(weight, sparsity, block_in, block_out)

    def update(self, layer: nn.Module) -> None:
        """Per-iteration refresh: magnitude masks only change on schedule."""


@MASK_GENERATORS.register_module()
class STRMaskGenerator(NormalMaskGenerator):
    """Reads STR's implicit mask (``W_eff != 0``) into the ``mask`` buffer so
    checkpoints and reports show the current sparsity."""

    fake_sparse_types = ('STRFakeSparse',)

    @torch.no_grad()
    def update(self, layer: nn.Module) -> None:
        fs = layer.weight_fake_sparse
        fs.mask.copy_(fs(dense_weight(layer)) != 0)


@MASK_GENERATORS.register_module()
class ProbMaskGenerator(NormalMaskGenerator):
    """Global keep-probability projection and hard top-k masks (ProbMask)."""

    fake_sparse_types = ('ProbMaskFakeSparse',)
    # Only ProbMaskScheduler projects the scores onto the budget and sets
    # the hard masks; under another scheduler nothing would ever be pruned.
    scheduler_types = ('ProbMaskScheduler',)

    def project(self, scores: list[torch.Tensor], keep: float) -> None:
        project_to_budget(scores, keep)

    def hard_masks(self, scores: list[torch.Tensor], keep: int,
                   weights: list[torch.Tensor] | None = None):
        # Ties among saturated scores (p = 1) are broken by |w| so the hard
        # mask is deterministic and prefers large weights.
        if weights is not None:
            top = max(float(w.detach().abs().max()) for w in weights) + 1e-12
            scores = [s.detach() + 1e-6 * w.detach().abs() / top
                      for s, w in zip(scores, weights)]
        return global_topk_masks(scores, keep)
