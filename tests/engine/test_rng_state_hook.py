"""RNG states in checkpoints are plain values (engine/hooks/rng_state_hook.py)."""
import torch

from mmrazor_ext.engine.hooks.rng_state_hook import capture_rng_state, restore_rng_state


def test_rng_state_round_trip_loads_weights_only(tmp_path):
    import random

    import numpy as np
    state = capture_rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1))
    torch.save({'meta': {'rng_state': state}}, tmp_path / 'c.pth')
    loaded = torch.load(tmp_path / 'c.pth', weights_only=True)
    restore_rng_state(loaded['meta']['rng_state'])
    assert (random.random(), np.random.rand(), torch.rand(1)) == a
