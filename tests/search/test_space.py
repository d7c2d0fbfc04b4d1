"""The keep-ratio search space and its seeds (search/space.py)."""
import pytest

from mmrazor_ext.search import ratio_grid


def test_keep_ratio_space_seeds(small_setup):
    _, pruner = small_setup
    from mmrazor_ext.search import KeepRatioSpace
    grid = ratio_grid(0.5, 1.0, 0.25)
    space = KeepRatioSpace(pruner, {}, grid,
                           dict(global_prune_ratios=(0.5,), flops_ratios=()))
    assert space.seeds['global_prune_ratios'] == (0.5,)
    seeds = space.seed_candidates()
    assert len(seeds) == 1 + len(grid)
    # a prune ratio of 0.5 under one global threshold keeps about half
    kept = sum(seeds[0][n] * s.num_channels
               for n, s in pruner.channel_spaces.items())
    total = sum(s.num_channels for s in pruner.channel_spaces.values())
    assert 0.4 < kept / total < 0.6
    # the old key still works, with a warning
    with pytest.warns(DeprecationWarning, match='global_prune_ratios'):
        old = KeepRatioSpace(pruner, {}, grid, dict(global_ratios=(0.5,)))
    assert old.seeds['global_prune_ratios'] == (0.5,)
    with pytest.raises(KeyError, match='unknown'):
        KeepRatioSpace(pruner, {}, grid, dict(prune=(0.5,)))
