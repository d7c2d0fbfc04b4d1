"""MACs (multiply-accumulates, "FLOPs") and parameter counting on the FX
graph.

The graph comes from :func:`mmrazor_ext.graph.trace_model`, the same tracer
the channel analysis uses, so a layer counted here is a layer the pruner
sees. Counts are for the given ``example_inputs`` (pass a batch of one to
get per-image numbers).
"""
from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from mmrazor_ext.graph import OpTable, find_layer_kind, trace_model, traceable_view

__all__ = ['get_model_complexity', 'register_module_flops',
           'register_function_flops', 'count_params']

#: MACs counters of modules that are no layer kind (attention ...); layer
#: kinds carry their own formula (:class:`~mmrazor_ext.graph.LayerKind`)
_MODULE_MACS = OpTable()
_FUNCTION_MACS = OpTable()


def register_module_flops(*classes: type):
    """Register ``fn(module, args, kwargs, output) -> int`` (MACs) for
    classes; it takes precedence over a layer kind's ``macs``."""
    return _MODULE_MACS.register(*classes)


def register_function_flops(*targets: Any):
    """Register ``fn(args, kwargs, output) -> int`` (MACs) for function
    targets or tensor-method names (strings)."""
    return _FUNCTION_MACS.register(*targets)


def _numel(x) -> int:
    return x.numel() if isinstance(x, torch.Tensor) else 0


@register_module_flops(nn.Bilinear)
def _bilinear_macs(m, args, kwargs, out):
    return _numel(out) * m.in1_features * m.in2_features


@register_module_flops(nn.MultiheadAttention)
def _mha_macs(m, args, kwargs, out):
    q = args[0]
    k = args[1] if len(args) > 1 else kwargs.get('key', q)
    e = m.embed_dim
    # (L, N, E) or (N, L, E): both give L*N tokens; S*N key tokens
    if m.batch_first:
        n, lq, _ = q.shape
        s = k.shape[1]
    else:
        lq, n, _ = q.shape
        s = k.shape[0]
    proj = n * lq * e * e + 2 * n * s * e * e  # q, k, v projections
    attn = 2 * n * lq * s * e  # q @ k^T and attn @ v
    return proj + attn + n * lq * e * e  # + output projection


def _matmul_macs(args, kwargs, out):
    a, b = args[0], args[1]
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        return 0
    k = a.shape[-1]
    return _numel(out) * k


register_function_flops(torch.matmul, operator.matmul, torch.bmm, torch.mm,
                        'matmul', 'bmm', 'mm', '__matmul__')(_matmul_macs)


@register_function_flops(F.linear)
def _f_linear_macs(args, kwargs, out):
    w = args[1] if len(args) > 1 else kwargs['weight']
    return _numel(out) * w.shape[-1]


@register_function_flops(F.conv1d, F.conv2d, F.conv3d)
def _f_conv_macs(args, kwargs, out):
    w = args[1] if len(args) > 1 else kwargs['weight']
    return _numel(out) * math.prod(w.shape[1:])


@register_function_flops(F.scaled_dot_product_attention)
def _sdpa_macs(args, kwargs, out):
    q, k = args[0], args[1]
    return 2 * q.shape[-2] * k.shape[-2] * q.shape[-1] * math.prod(
        q.shape[:-2])


@register_function_flops(torch.einsum)
def _einsum_macs(args, kwargs, out):
    """Two-operand einsum: one MAC per point of the joint index space."""
    eq, ops = args[0], args[1:]
    if len(ops) == 1 and isinstance(ops[0], (tuple, list)):
        ops = tuple(ops[0])
    if len(ops) != 2 or '...' in eq:
        return 0
    lhs = eq.replace(' ', '').split('->')[0].split(',')
    sizes = {}
    for spec, t in zip(lhs, ops):
        for ch, n in zip(spec, t.shape):
            sizes[ch] = n
    return math.prod(sizes.values())


def _swin_attention_macs(args, kwargs, out):
    """torchvision's wrapped ``shifted_window_attention``: qkv and output
    projections plus window attention (padding included)."""
    x, qkv_w, proj_w, _, window = args[:5]
    b, h, w, c = x.shape
    hp = math.ceil(h / window[0]) * window[0]
    wp = math.ceil(w / window[1]) * window[1]
    tokens = b * hp * wp
    per_window = window[0] * window[1]
    attn = 2 * tokens * per_window * c  # q @ k^T and attn @ v
    return tokens * (qkv_w.shape[0] * c + proj_w.shape[0] * c) + attn


try:
    from torchvision.models import swin_transformer as _swin
    register_function_flops(_swin.shifted_window_attention)(
        _swin_attention_macs)
except ImportError:  # pragma: no cover - torchvision is a dependency
    pass


def _module_macs_rule(m: nn.Module) -> Callable | None:
    rule = _MODULE_MACS.lookup_module(m)
    if rule is None:
        kind = find_layer_kind(m)
        rule = kind.macs if kind is not None else None
    return rule


def count_params(module: nn.Module, recurse: bool = True) -> int:
    """Number of parameter elements of ``module`` (shared ones once)."""
    seen, total = set(), 0
    for p in module.parameters(recurse=recurse):
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


class _MacsInterpreter(fx.Interpreter):
    """Runs the graph on real tensors and accumulates MACs per node."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.layers: dict[str, dict[str, Any]] = {}
        self.total_macs = 0

    def call_module(self, target, args, kwargs):
        out = super().call_module(target, args, kwargs)
        m = self.fetch_attr(target)
        rule = _module_macs_rule(m)
        macs = int(rule(m, args, kwargs, out)) if rule else 0
        self.total_macs += macs
        # per-layer entries keep the historical key 'flops' (= MACs)
        entry = self.layers.setdefault(
            target, {'flops': 0, 'params': count_params(m),
                     'type': type(m).__name__})
        entry['flops'] += macs  # a module called twice counts twice
        return out

    def _count_function(self, key, name, args, kwargs, out):
        rule = _FUNCTION_MACS.get(key)
        if rule is None:
            return
        macs = int(rule(args, kwargs, out))
        if macs:
            self.total_macs += macs
            self.layers[name] = {'flops': macs, 'params': 0,
                                 'type': getattr(key, '__name__', str(key))}

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if n.op in ('call_function', 'call_method'):
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            self._count_function(n.target, n.name, args, kwargs, out)
        return out


def get_model_complexity(model: nn.Module,
                         example_inputs: torch.Tensor | Iterable[torch.Tensor],
                         per_layer: bool = False,
                         leaf_modules: Iterable[type | str] = (),
                         ) -> dict[str, Any]:
    """Count MACs and parameters of ``model`` on ``example_inputs``.

    MACs (multiply-accumulates, historically called FLOPs here) of
    convolutions (groups included), linear layers, matmul / bmm / attention
    and the affine part of normalisation layers (each layer kind's ``macs``,
    see :class:`~mmrazor_ext.graph.LayerKind`); activations and pooling
    count zero. The model is run once in eval mode under ``torch.no_grad``
    (its mode is restored).

    Args:
        model: Model to measure (an mmengine model is measured on its tensor
            path: backbone -> neck -> head).
        example_inputs: One tensor or a tuple of positional input tensors.
        per_layer: Also return ``'layers'``: ``{qualified module name:
            {'flops' (MACs), 'params', 'type'}}`` for every leaf module
            called (function ops with MACs, e.g. matmul, appear under their
            node name).
        leaf_modules: Extra leaf modules for the tracer.

    Returns:
        ``{'macs': int, 'flops': int, 'params': int}`` with ``flops`` equal
        to ``macs`` (+ ``'layers'`` if requested).

    Raises:
        ValueError: The model has no parameters and no MACs (empty).
    """
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    # a model FX cannot trace whole (detector, size-branching timm blocks)
    # is counted through its traceable view: same layers, same names
    gm = trace_model(traceable_view(model), leaf_modules=leaf_modules,
                     example_inputs=example_inputs)
    was_training = model.training
    model.eval()
    try:
        interp = _MacsInterpreter(gm)
        with torch.no_grad():
            interp.run(*example_inputs)
    finally:
        model.train(was_training)
    macs, params = int(interp.total_macs), count_params(model)
    if macs == 0 and params == 0:
        raise ValueError(
            f'get_model_complexity: model {type(model).__name__} is empty: '
            'no parameters and no operation with MACs, nothing to measure')
    # 'flops' is the historical name of the same MACs count
    result: dict[str, Any] = {'macs': macs, 'flops': macs, 'params': params}
    if per_layer:
        result['layers'] = interp.layers
    return result
