"""MACs ("FLOPs") / params from the shared FX graph and CPU latency
measurement."""
from .complexity import (
                         count_params,
                         get_model_complexity,
                         register_function_flops,
                         register_module_flops,
)
from .latency import measure_latency
from .latency_table import LatencyTable

__all__ = ['LatencyTable', 'count_params', 'get_model_complexity',
           'measure_latency',
           'register_function_flops', 'register_module_flops']
