"""The floor of the package: atomic writes, unwrapping, evaluation helpers,
the allocator setting of latency measurements.

Nothing here imports another ``mmrazor_ext`` package.
"""
from .allocator import retain_freed_memory
from .evaluation import evaluate_top1, recalibrate_bn, to_tensors
from .io import atomic_torch_save, atomic_write, atomic_write_json, atomic_write_text
from .model import perturb_parameters, unwrap_model

__all__ = [
    'atomic_write', 'atomic_write_text', 'atomic_write_json',
    'atomic_torch_save', 'unwrap_model', 'perturb_parameters',
    'evaluate_top1', 'recalibrate_bn', 'to_tensors', 'retain_freed_memory'
]
