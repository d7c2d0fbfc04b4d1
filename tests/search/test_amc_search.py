"""AMC search support: the latency command template (search/amc_search.py)."""
import pytest
import torch
from torch import nn

from helpers import PY


def test_latency_command_template(tmp_path):
    from mmrazor_ext.search import LatencyProvider
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 26 * 26, 10)).eval()
    script = ('import os, sys; assert sys.argv[1].endswith(".onnx"); '
              'assert os.path.getsize(sys.argv[1]) > 0; '
              'print("shape", sys.argv[2], "latency_ms:", 1.25)')
    cmd = f"{PY} -c '{script}' {{onnx}} {{input_shape}}"
    lat = LatencyProvider((torch.randn(1, 1, 28, 28),), cmd=cmd)
    ms, ops = lat(model)
    assert ms == 1.25 and ops == 4
    with pytest.raises(ValueError, match='docker_cfg.latency_cmd'):
        LatencyProvider((torch.randn(1, 1, 28, 28),), cmd='bench {onnxx}')
    bad = LatencyProvider((torch.randn(1, 1, 28, 28),),
                          cmd=f"{PY} -c 'import sys; "
                              "sys.exit(3)' {onnx}")
    with pytest.raises(RuntimeError, match='docker_cfg.latency_cmd'):
        bad(model)
