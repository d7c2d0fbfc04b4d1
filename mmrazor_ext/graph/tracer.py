"""The project's single FX tracer.

Every component that needs a graph (channel analysis, FLOPs counting,
sparsity layer selection, fusion) calls :func:`trace_model`; nothing else in
the code base creates an ``torch.fx.Tracer``.
"""
from __future__ import annotations

import inspect
import operator
import sys
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from .layer_kinds import is_layer_kind_class

__all__ = ['TraceError', 'trace_model', 'default_concrete_args',
           'node_outputs_module', 'graph_depends_on_mode', 'set_train_mode',
           'meta_module_output', 'meta_function_output',
           'same_graph_up_to_flags']


class TraceError(RuntimeError):
    """Raised when symbolic tracing fails; names the module that failed."""


class _LeafTracer(fx.Tracer):
    """FX tracer whose leaf set is torch's default, the classes that have a
    layer kind (:mod:`.layer_kinds`) and user entries.

    Args:
        leaf_classes: Module classes traced as opaque calls.
        leaf_names: Qualified module names traced as opaque calls.
    """

    def __init__(self, leaf_classes: tuple[type, ...] = (),
                 leaf_names: frozenset[str] = frozenset()):
        super().__init__()
        self.leaf_classes = leaf_classes
        self.leaf_names = leaf_names

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if self.leaf_classes and isinstance(m, self.leaf_classes):
            return True
        if module_qualified_name in self.leaf_names:
            return True
        if is_layer_kind_class(type(m)):  # described as a whole
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except TraceError:
            raise  # keep the innermost (most precise) module name
        except Exception as e:
            try:
                name = self.path_of_module(m)
            except NameError:
                name = '<unregistered>'
            raise TraceError(
                f"torch.fx could not trace module '{name}' "
                f'({type(m).__name__}): {type(e).__name__}: {e}. '
                f"Pass leaf_modules=({type(m).__name__},) or "
                f"leaf_modules=('{name}',) to treat it as one opaque call."
            ) from e


def _split_leaves(leaf_modules: Iterable[type | str]):
    classes, names = [], []
    for item in leaf_modules:
        if isinstance(item, str):
            names.append(item)
        elif isinstance(item, type) and issubclass(item, nn.Module):
            classes.append(item)
        else:
            raise TypeError(
                'leaf_modules entries must be nn.Module classes or qualified '
                f'module names, got {item!r}')
    return tuple(classes), frozenset(names)


def default_concrete_args(model: nn.Module) -> dict[str, Any] | None:
    """Concrete args that select the pure-tensor path of an mmengine model.

    mmengine models (e.g. mmpretrain's ``ImageClassifier``) take
    ``(inputs, data_samples, mode)``; ``mode='tensor'`` runs
    backbone -> neck -> head and returns logits without data samples.

    Args:
        model: The model to be traced.

    Returns:
        ``{'data_samples': None, 'mode': 'tensor'}`` for such models, else
        ``None``.
    """
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return None
    if 'mode' in params:
        args = {'mode': 'tensor'}
        if 'data_samples' in params:
            args['data_samples'] = None
        return args
    return None


def trace_model(model: nn.Module, leaf_modules: Iterable[type | str] = (),
                concrete_args: dict[str, Any] | None = None
                ) -> fx.GraphModule:
    """Symbolically trace ``model`` into a ``GraphModule``.

    The returned graph module shares parameters and submodules with
    ``model`` (nothing is copied), so qualified names in the graph are the
    names in ``model``. mmengine models are traced on their tensor path
    (``mode='tensor'``) unless ``concrete_args`` says otherwise.

    Args:
        model: Module to trace.
        leaf_modules: Extra leaf modules, given as classes or qualified
            names, that are recorded as single ``call_module`` nodes instead
            of being traced through (torch's own ``nn`` modules are always
            leaves).
        concrete_args: Passed to ``torch.fx.Tracer.trace``.

    Returns:
        The traced ``torch.fx.GraphModule``.

    Raises:
        TraceError: If tracing fails; the message names the innermost module
            whose forward failed and suggests ``leaf_modules``.
    """
    if 'timm' in sys.modules:  # a timm model: its layers' rules (once)
        from .timm_rules import register_timm_rules
        register_timm_rules()
    classes, names = _split_leaves(leaf_modules)
    tracer = _LeafTracer(classes, names)
    if concrete_args is None:
        concrete_args = default_concrete_args(model)
    try:
        graph = tracer.trace(model, concrete_args=concrete_args)
    except TraceError:
        raise
    except Exception as e:
        raise TraceError(
            f'torch.fx could not trace {type(model).__name__}.forward: '
            f'{type(e).__name__}: {e}. Mark the offending submodule with '
            'leaf_modules=(...) or pass concrete_args.') from e
    name = type(model).__name__
    return fx.GraphModule(tracer.root, graph, name)


def node_outputs_module(gm: fx.GraphModule, node_names: list[str]
                        ) -> fx.GraphModule:
    """A GraphModule sharing ``gm``'s modules that returns the tuple of the
    named nodes' values, in the order given; the nodes after the last of
    them are not run.

    Args:
        gm: A traced module (e.g. from :func:`trace_model`).
        node_names: Names of nodes of ``gm.graph``, each at most once.
    """
    graph = fx.Graph()
    env: dict = {}
    graph.graph_copy(gm.graph, env)
    by_name = {n.name: n for n in gm.graph.nodes}
    graph.output(tuple(env[by_name[n]] for n in node_names))
    inst = fx.GraphModule(gm, graph)
    inst.graph.eliminate_dead_code()
    inst.recompile()
    return inst


def is_tensor(x: Any) -> bool:
    """Whether ``x`` is a ``torch.Tensor`` (helper shared by graph users)."""
    return isinstance(x, torch.Tensor)


# -- train / eval mode --------------------------------------------------------
_TRAINING_DEPENDENT: dict[type, bool] = {}


def _forward_reads_training(cls: type) -> bool:
    """Whether a (non-leaf) module class's forward mentions ``training``."""
    if cls not in _TRAINING_DEPENDENT:
        try:
            src = inspect.getsource(cls.forward)
        except (OSError, TypeError):
            src = 'training'  # unknown: assume it does
        _TRAINING_DEPENDENT[cls] = 'training' in src
    return _TRAINING_DEPENDENT[cls]


def graph_depends_on_mode(model: nn.Module) -> bool:
    """Whether tracing in train mode could give another graph: some traced
    (non-``torch.nn``) forward reads ``self.training`` (aux heads, drop
    path...)."""
    for m in model.modules():
        cls = type(m)
        if cls.__module__.startswith('torch.nn.'):
            continue
        if _forward_reads_training(cls):
            return True
    return False


def set_train_mode(model: nn.Module, training: bool) -> None:
    """``model.train(training)``, skipped when every module already is in
    that mode (same result): graph building switches modes several times and
    ``train()`` ``setattr``s every module or runs a slow override
    (mmpretrain's backbones)."""
    if any(m.training != training for m in model.modules()):
        model.train(training)


# -- shape-only evaluation ----------------------------------------------------
# Channel analysis runs the graph on meta tensors, where only shapes matter.
# torch's meta kernels of conv / pooling / binary ops are Python and cost
# ~0.1-1 ms a call, more than the channel rules themselves; these formulas give
# the same shapes. Only the exact torch classes are covered (a subclass may
# override forward); anything else, or inputs the real layer would reject,
# returns None and the caller runs the real meta kernel (and its checks).
_SHAPE_PRESERVING = (nn.modules.batchnorm._NormBase, nn.GroupNorm,
                     nn.LayerNorm, nn.ReLU, nn.ReLU6, nn.Hardswish,
                     nn.Hardsigmoid, nn.SiLU, nn.GELU, nn.Sigmoid, nn.Tanh,
                     nn.Identity, nn.modules.dropout._DropoutNd,
                     nn.LeakyReLU)
_CONVS = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}
_ADAPTIVE = {nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2,
             nn.AdaptiveAvgPool3d: 3}


def _meta_like(x: torch.Tensor, shape) -> torch.Tensor:
    return torch.empty(shape, dtype=x.dtype, device='meta')


def _conv_shape(m: nn.Module, x: torch.Tensor, nd: int):
    if x.ndim != nd + 2 or x.shape[1] != m.in_channels:
        return None
    if m.padding == 'same':
        return (x.shape[0], m.out_channels) + tuple(x.shape[2:])
    pad = (0,) * nd if m.padding == 'valid' else m.padding
    spatial = []
    for i in range(nd):
        size = x.shape[2 + i] + 2 * pad[i] - m.dilation[i] * (
            m.kernel_size[i] - 1) - 1
        if size < 0:
            return None
        spatial.append(size // m.stride[i] + 1)
    return (x.shape[0], m.out_channels) + tuple(spatial)


def _adaptive_shape(m: nn.Module, x: torch.Tensor, nd: int):
    size = m.output_size
    size = (size,) * nd if isinstance(size, int) else tuple(size)
    if x.ndim not in (nd + 1, nd + 2) or len(size) != nd:
        return None
    spatial = x.shape[-nd:]
    return tuple(x.shape[:-nd]) + tuple(
        spatial[i] if s is None else s for i, s in enumerate(size))


def meta_module_output(m: nn.Module, args: tuple, kwargs: dict):
    """Output of leaf module ``m`` on meta inputs ``args`` from its shape
    formula, or ``None`` when ``m`` has none (run it instead)."""
    if kwargs or len(args) != 1 or not isinstance(args[0], torch.Tensor):
        return None
    x = args[0]
    if isinstance(m, _SHAPE_PRESERVING):
        return x
    cls = type(m)
    shape = None
    if cls in _CONVS:
        shape = _conv_shape(m, x, _CONVS[cls])
    elif cls is nn.Linear:
        if x.ndim >= 1 and x.shape[-1] == m.in_features:
            shape = tuple(x.shape[:-1]) + (m.out_features,)
    elif cls in _ADAPTIVE:
        shape = _adaptive_shape(m, x, _ADAPTIVE[cls])
    return None if shape is None else _meta_like(x, shape)


_BINARY = frozenset([operator.add, operator.sub, operator.mul,
                     operator.truediv, torch.add, torch.sub, torch.mul])


def meta_function_output(target: Any, args: tuple, kwargs: dict):
    """Output of an out-of-place binary op on two meta tensors of one
    dtype (residual adds, SE gating) from broadcasting, else ``None``."""
    if kwargs or len(args) != 2 or target not in _BINARY:
        return None
    a, b = args
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) \
            or a.dtype != b.dtype or not a.is_floating_point():
        return None
    return _meta_like(a, torch.broadcast_shapes(a.shape, b.shape))


def same_graph_up_to_flags(a: fx.Graph, b: fx.Graph,
                           flags_ignored: Callable[[fx.Node], bool]) -> bool:
    """Whether two traces are the same graph, allowing ``bool`` constant
    arguments to differ at nodes where ``flags_ignored(node)`` holds.

    A train-mode trace usually differs from the eval-mode one only in flags
    passed on (``stochastic_depth(x, p, 'row', self.training)``); when the
    ops' channel rules ignore those flags, one analysis covers both modes.
    """
    na, nb = list(a.nodes), list(b.nodes)
    if len(na) != len(nb):
        return False
    for x, y in zip(na, nb):
        if (x.op, x.target, x.name) != (y.op, y.target, y.name):
            return False
        if len(x.args) != len(y.args) or x.kwargs.keys() != y.kwargs.keys():
            return False
        pairs = list(zip(x.args, y.args)) + [(x.kwargs[k], y.kwargs[k])
                                             for k in x.kwargs]
        for u, v in pairs:
            if _same_arg(u, v):
                continue
            if not (isinstance(u, bool) and isinstance(v, bool)
                    and flags_ignored(x)):
                return False
    return True


def _same_arg(u, v) -> bool:
    if isinstance(u, fx.Node) or isinstance(v, fx.Node):
        return isinstance(u, fx.Node) and isinstance(v, fx.Node) and \
            u.name == v.name
    if isinstance(u, (tuple, list)) and isinstance(v, (tuple, list)):
        return type(u) is type(v) and len(u) == len(v) and all(
            _same_arg(p, q) for p, q in zip(u, v))
    if isinstance(u, dict) and isinstance(v, dict):
        return u.keys() == v.keys() and all(_same_arg(u[k], v[k]) for k in u)
    return type(u) is type(v) and u == v
