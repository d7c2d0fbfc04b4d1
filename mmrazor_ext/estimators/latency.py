"""CPU latency measurement with pinned threads."""
from __future__ import annotations

import statistics
import time
from collections.abc import Iterable

import torch
from torch import nn

__all__ = ['CLOCKS', 'clock_of', 'measure_latency']

#: ``'wall'``: elapsed time; ``'cpu'``: CPU time of this process, which on
#: one thread is the latency on an idle core and is not inflated when other
#: jobs share the cores (time slices spent waiting are not counted).
CLOCKS = {'wall': time.perf_counter, 'cpu': time.process_time}


def clock_of(clock: str, num_threads: int | None = None):
    """The timer of ``clock`` (checked).

    Raises:
        ValueError: Naming ``clock`` for an unknown name, or ``'cpu'`` with
            more than one thread (CPU time then sums the threads).
    """
    if clock not in CLOCKS:
        raise ValueError(f'clock must be one of {sorted(CLOCKS)}, got '
                         f'{clock!r}')
    threads = num_threads or torch.get_num_threads()
    if clock == 'cpu' and threads != 1:
        raise ValueError(f"clock='cpu' measures latency only with one "
                         f'thread (num_threads=1), got {threads} threads')
    return CLOCKS[clock]


def measure_latency(model: nn.Module,
                    inputs: torch.Tensor | Iterable[torch.Tensor],
                    warmup: int = 5, repeats: int = 30,
                    num_threads: int | None = None,
                    clock: str = 'wall') -> float:
    """Median seconds of one forward pass in eval / no-grad mode.

    Args:
        model: Model to time (put in eval mode for the measurement; its mode
            is restored afterwards).
        inputs: One tensor or a tuple of positional inputs.
        warmup: Untimed runs first (allocator, oneDNN kernel selection).
        repeats: Timed runs; the median is returned.
        num_threads: Intra-op threads pinned for the measurement (default:
            the current setting, pinned so that a concurrent change cannot
            skew runs); the previous value is restored.
        clock: ``'wall'`` (elapsed) or ``'cpu'`` (process CPU time, one
            thread only: robust to other jobs on the machine).

    Returns:
        Median latency in seconds.
    """
    if repeats < 1:
        raise ValueError(f'repeats must be >= 1, got {repeats}')
    timer = clock_of(clock, num_threads)
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
                t0 = timer()
                model(*inputs)
                times.append(timer() - t0)
    finally:
        torch.set_num_threads(old_threads)
        model.train(was_training)
    return statistics.median(times)
