"""Latency measurement (estimators/latency.py)."""
import pytest
import torch

from mmrazor_ext.estimators import measure_latency
from mmrazor_ext.models import CifarResNet


def test_measure_latency_restores_threads_and_mode():
    model = CifarResNet(20).train()
    before = torch.get_num_threads()
    t = measure_latency(model, torch.randn(2, 3, 32, 32), warmup=1,
                        repeats=3, num_threads=1)
    assert 0 < t < 10
    assert torch.get_num_threads() == before
    assert model.training
    with pytest.raises(ValueError):
        measure_latency(model, torch.randn(1, 3, 32, 32), repeats=0)
