"""retain_freed_memory: a freed 64 MiB activation is reused, not
page-faulted in again (the cost that hid pruning savings in latency
benchmarks at large batches)."""
import json
import platform
import subprocess
import sys

import pytest

from mmrazor_ext.utils import retain_freed_memory

# Allocate and touch 64 MiB (above glibc's largest mmap threshold), free
# it, and again, like the activations of one forward pass after another;
# print the minor page faults of each round. Run in a fresh process: the
# setting is process-wide.
_PROBE = r'''
import json, resource, sys
import torch
from mmrazor_ext.utils import retain_freed_memory
applied = retain_freed_memory() if sys.argv[1] == 'retain' else None
faults = []
for _ in range(12):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(16 * 2**20); del x
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(json.dumps({'applied': applied, 'faults': faults}))
'''
PAGES = 64 * 2**20 // 4096

glibc = pytest.mark.skipif(
    platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc',
    reason='the setting applies to glibc only')


def _probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, '-c', _PROBE, mode], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@glibc
def test_freed_activation_memory_is_reused_without_page_faults():
    system, retain = _probe('system'), _probe('retain')
    assert retain['applied'] is True
    # glibc's default maps the block afresh each time: every page faults
    assert min(system['faults']) > 0.9 * PAGES, system
    # kept: once the heap holds a block of that size (posix_memalign's
    # split-off ends take a few rounds to coalesce), reuse costs no faults
    assert max(retain['faults'][-3:]) < 0.01 * PAGES, retain


def test_other_c_libraries_are_left_alone(monkeypatch):
    monkeypatch.setattr(platform, 'libc_ver', lambda: ('musl', '1.2'))
    assert retain_freed_memory() is False
