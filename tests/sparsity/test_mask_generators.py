"""Mask math: N:M, magnitude, block masks and the budget projection
(sparsity/mask_generators.py)."""
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmrazor_ext.sparsity import (
    block_aligned,
    block_mask,
    magnitude_mask,
    nm_compliant,
    nm_mask,
)
from mmrazor_ext.sparsity.mask_generators import project_to_budget


@settings(max_examples=25, deadline=None)
@given(out_c=st.integers(1, 12), in_groups=st.integers(1, 6),
       k=st.sampled_from([(), (1, 1), (3, 3)]), sparsity=st.floats(0, 1),
       seed=st.integers(0, 1000))
def test_mask_invariants(out_c, in_groups, k, sparsity, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_c, 4 * in_groups, *k, generator=g)
    m = nm_mask(w)
    assert nm_compliant(w * m) and int(m.sum()) == w.numel() // 2
    keep = magnitude_mask(w, sparsity)
    assert int((~keep).sum()) == int(round(sparsity * w.numel()))


def test_magnitude_mask_exact_fraction():
    w = torch.randn(64, 32, 3, 3)
    m = magnitude_mask(w, 0.7)
    assert abs((~m).float().mean().item() - 0.7) < 1e-3
    assert w[m].abs().min() >= w[~m].abs().max()


def test_nm_mask_groups_along_input_channels():
    w = torch.randn(16, 32, 3, 3)
    m = nm_mask(w, 2, 4)
    assert nm_compliant(w * m)
    groups = m.movedim(1, -1).reshape(-1, 4)
    assert (groups.sum(1) == 2).all()
    assert not nm_compliant(w)
    # The two largest of every group are kept.
    wg = w.abs().movedim(1, -1).reshape(-1, 4)
    kept_min = torch.where(groups, wg, torch.full_like(wg, 1e9)).min(1).values
    dropped_max = torch.where(~groups, wg, torch.zeros_like(wg)).max(1).values
    assert (kept_min >= dropped_max).all()


def test_block_mask_tile_aligned():
    torch.manual_seed(0)
    w = torch.randn(130, 100, 3, 3)  # ragged edges: 2x3 full tiles
    m = block_mask(w, 0.5)
    assert block_aligned(m)
    assert int((~m).sum()) == 3 * 64 * 32 * 9
    assert m[128:].all() and m[:, 96:].all()  # ragged edges stay dense
    assert block_mask(torch.randn(64, 32, 3, 3), 0.9).all()  # last tile kept
    bad = m.clone()
    bad[129, 0, 0, 0] = False  # a lone zero in the dense edge
    assert not block_aligned(bad)
    partial = m.clone()
    partial[:64, :32] = True
    partial[:64, :16] = False  # half a tile
    assert not block_aligned(partial)


def test_projection_meets_budget():
    torch.manual_seed(0)
    scores = [torch.rand(50), torch.rand(30, 2)]
    project_to_budget(scores, 40.0)
    total = sum(float(s.sum()) for s in scores)
    assert abs(total - 40.0) < 1e-3
    assert all(float(s.min()) >= 0 and float(s.max()) <= 1 for s in scores)
