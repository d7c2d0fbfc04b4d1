"""CPU latency measurement with pinned threads."""
from __future__ import annotations

import statistics
import time
from collections.abc import Iterable

import torch
from torch import nn

__all__ = ['measure_latency']


def measure_latency(model: nn.Module,
                    inputs: torch.Tensor | Iterable[torch.Tensor],
                    warmup: int = 5, repeats: int = 30,
                    num_threads: int | None = None) -> float:
    """Median wall-clock seconds of one forward pass in eval / no-grad mode.

    Args:
        model: Model to time (put in eval mode for the measurement; its mode
            is restored afterwards).
        inputs: One tensor or a tuple of positional inputs.
        warmup: Untimed runs first (allocator, oneDNN kernel selection).
        repeats: Timed runs; the median is returned.
        num_threads: Intra-op threads pinned for the measurement (default:
            the current setting, pinned so that a concurrent change cannot
            skew runs); the previous value is restored.

    Returns:
        Median latency in seconds.
    """
    if repeats < 1:
        raise ValueError(f'repeats must be >= 1, got {repeats}')
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    inputs = tuple(inputs)
    old_threads = torch.get_num_threads()
    was_training = model.training
    torch.set_num_threads(num_threads or old_threads)
    model.eval()
    times = []
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(*inputs)
            for _ in range(repeats):
                t0 = time.perf_counter()
                model(*inputs)
                times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old_threads)
        model.train(was_training)
    return statistics.median(times)
