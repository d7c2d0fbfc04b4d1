"""Keep freed CPU memory in the process while timing (glibc malloc).

glibc serves every allocation above its mmap threshold (32 MiB at most)
with fresh pages from the kernel and gives them back on ``free``. A CNN
at a large batch allocates activations of that size on every forward
pass, so each pass page-faults them in again. Measured here (torchvision
ResNet-50, batch 64, 224 px, 2 threads): 2.6 M minor faults and 5.2 s of
kernel time per 5.7 s forward pass; with freed memory kept, 2.9 s. That
cost follows activation bytes (linear in channels), not MACs, so it hides
what channel pruning saves, and how large it is depends on the allocator
rather than on the model: caching allocators (jemalloc, tcmalloc, and
PyTorch's own on GPU) keep the pages. Latency benchmarks therefore time
with freed memory kept (:func:`retain_freed_memory`).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform

__all__ = ['retain_freed_memory']

# mallopt(3) parameter numbers (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def retain_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse, for the whole process.

    Large blocks come from the heap instead of fresh mappings
    (``M_MMAP_MAX=0``) and the heap is not trimmed back to the kernel
    (``M_TRIM_THRESHOLD`` 2 GiB), the behaviour of a caching allocator.
    The process keeps its peak footprint from then on, and more: the
    ends that ``posix_memalign`` splits off keep a freed block from fitting
    the next request of the same size until neighbours coalesce (a 64 MiB
    block was reused from the 8th round on), so time after warm-up runs,
    and call it only in processes that time models (benchmarks).

    Returns:
        True when applied; False where the C library is not glibc (the
        allocator is left as it is).
    """
    if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc':
        return False
    libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
    ok = libc.mallopt(_M_MMAP_MAX, 0) == 1
    ok = libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1 and ok
    return ok
