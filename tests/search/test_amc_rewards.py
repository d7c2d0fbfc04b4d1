"""The AMC reward protocols (search/amc_rewards.py)."""
import math

import pytest


def test_reward_formulas():
    from mmrazor_ext.search import PROTOCOLS, compute_reward
    assert set(PROTOCOLS) == {'mac-constrained', 'accuracy-guaranteed',
                              'mac-constrained-experimental', 'punish-agent'}
    ind1, macs, dense, d = 72.5, 4.0e7, 1.0e8, 0.5
    assert compute_reward('mac-constrained', ind1, macs, dense, d) == 0.725
    assert compute_reward('accuracy-guaranteed', ind1, macs, dense, d) == \
        pytest.approx(-(1 - 0.725) * math.log(4.0e7))
    assert compute_reward('mac-constrained-experimental', ind1, macs, dense,
                          d) == pytest.approx(0.725 - abs(4.0e7 / 5.0e7 - 1))
    assert compute_reward('punish-agent', ind1, macs, dense, d) == 0.725
    assert compute_reward('punish-agent', ind1, 6.0e7, dense, d) == \
        pytest.approx(-1.2)
    # latency term: reward - w * t / t0
    assert compute_reward('mac-constrained', ind1, macs, dense, d, 3.0, 6.0,
                          0.2) == pytest.approx(0.725 - 0.1)
    with pytest.raises(ValueError, match='amc_cfg.protocol'):
        compute_reward('greedy', ind1, macs, dense, d)
