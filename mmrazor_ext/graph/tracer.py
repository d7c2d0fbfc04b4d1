"""The project's single FX tracer.

Every component that needs a graph (channel analysis, FLOPs counting,
sparsity layer selection, fusion) calls :func:`trace_model`; nothing else in
the code base creates a ``torch.fx.Tracer``. :func:`trace_model` itself
falls back to :class:`~.concrete_tracer.ConcreteTracer` (this module's
:class:`LeafTracer`, run alongside the example input) when the symbolic
trace fails.
"""
from __future__ import annotations

import inspect
import operator
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.fx.traceback as fx_traceback
import torch.nn.functional as F
from torch import nn

# what torch.func.functional_call uses to swap a module's tensors
from torch.nn.utils.stateless import _reparametrize_module

from .layer_kinds import is_layer_kind_class

try:
    # generates the Python code of forward on first call, not at
    # construction: most traces are only analysed (the code generation is
    # ~10 % of a ResNet-56 graph build), and a call or ``.code`` still works
    from torch.fx._lazy_graph_module import _LazyGraphModule as _GraphModule
except ImportError:  # pragma: no cover - older torch
    _GraphModule = fx.GraphModule

__all__ = ['TraceError', 'LeafTracer', 'trace_model', 'default_concrete_args',
           'node_outputs_module', 'graph_depends_on_mode', 'set_train_mode',
           'meta_module_output', 'meta_function_output',
           'same_graph_up_to_flags', 'MetaInterpreter']


_PLAIN_ARGS = frozenset([int, float, bool, str, type(None)])


class TraceError(RuntimeError):
    """Raised when symbolic tracing fails; names the module that failed."""


class LeafTracer(fx.Tracer):
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

    def create_arg(self, a: Any):
        # the common exact types, answered as torch.fx would after its
        # parameter / tensor / opaque-type checks (a quarter of the trace
        # time went there); anything else takes the full path
        t = type(a)
        if t is fx.Proxy:
            return a.node
        if t in _PLAIN_ARGS:
            return a
        if t is nn.Parameter or t is torch.Tensor:
            # torch.fx searches named_parameters / named_buffers for every
            # tensor argument (quadratic in a model whose norm layers are
            # traced through: timm's BatchNormAct2d); same first name here
            name = self._tensor_name(a, t is nn.Parameter)
            if name is not None:
                return self.create_node('get_attr', name, (), {})
        if t is tuple:
            return tuple([self.create_arg(e) for e in a])
        if t is list:
            return [self.create_arg(e) for e in a]
        if t is dict and not a:  # the kwargs of most calls
            return {}
        return super().create_arg(a)

    def _tensor_name(self, t: torch.Tensor, param: bool) -> str | None:
        """The first name of ``t`` among ``self.root``'s parameters
        (``param``) or buffers, as named_parameters / named_buffers list
        them; the maps are built once per root."""
        cache = getattr(self, '_names_cache', None)
        if cache is None or cache[0] is not self.root:
            maps = ({}, {})
            for k, v in self.root.named_buffers():
                maps[0].setdefault(id(v), (k, v))
            for k, v in self.root.named_parameters():
                maps[1].setdefault(id(v), (k, v))
            cache = self._names_cache = (self.root, maps)
        hit = cache[1][param].get(id(t))
        return hit[0] if hit is not None and hit[1] is t else None

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        # torch's getattr with a dict look-up instead of a walk over
        # named_parameters / named_buffers per parameter attribute access
        if not isinstance(attr_val, torch.Tensor) or self.param_shapes_constant:
            return super().getattr(attr, attr_val, parameter_proxy_cache)
        name = self._tensor_name(attr_val, True) \
            if isinstance(attr_val, nn.Parameter) else None
        if name is None and self.proxy_buffer_attributes:
            name = self._tensor_name(attr_val, False)
        if name is None:
            return super().getattr(attr, attr_val, parameter_proxy_cache)
        if name not in parameter_proxy_cache:
            parameter_proxy_cache[name] = self.create_proxy(
                'get_attr', name, (), {})
        return parameter_proxy_cache[name]

    def create_node(self, kind, target, args, kwargs, name=None,
                    type_expr=None):
        # TracerBase.create_node in the default configuration (no mutation
        # check, no stack traces, no preserved node meta), with a dict copy
        # of the module stack instead of copy.copy (its __reduce_ex__ path
        # was a tenth of the trace); anything else takes torch's own path
        if self.check_mutable_operations or self.record_stack_traces or \
                fx_traceback.has_preserved_node_meta():
            return super().create_node(kind, target, args, kwargs, name,
                                       type_expr)
        node = self.graph.create_node(kind, target, args, kwargs, name,
                                      type_expr)
        scope = self.scope
        self.node_name_to_scope[node.name] = (scope.module_path,
                                              scope.module_type)
        if self.module_stack:
            node.meta['nn_module_stack'] = self.module_stack.copy()
        return node

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
                concrete_args: dict[str, Any] | None = None,
                example_inputs: Sequence[Any] | torch.Tensor | None = None
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
        example_inputs: Positional inputs of ``model``. When the symbolic
            trace fails (Python control flow on a traced size), the model is
            traced again with them
            (:mod:`~mmrazor_ext.graph.concrete_tracer`): branches on sizes
            follow this input's shape, and ``gm.meta['concrete_trace']`` is
            set.

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
    tracer = LeafTracer(classes, names)
    if concrete_args is None:
        concrete_args = default_concrete_args(model)
    try:
        graph = tracer.trace(model, concrete_args=concrete_args)
    except Exception as e:
        err = e if isinstance(e, TraceError) else TraceError(
            f'torch.fx could not trace {type(model).__name__}.forward: '
            f'{type(e).__name__}: {e}. Mark the offending submodule with '
            'leaf_modules=(...) or pass concrete_args.')
        if example_inputs is None:
            raise err from e
        from .concrete_tracer import concrete_trace
        if isinstance(example_inputs, torch.Tensor):
            example_inputs = (example_inputs,)
        try:
            tracer, graph = concrete_trace(model, example_inputs, classes,
                                           names, concrete_args)
        except TraceError as e2:
            raise TraceError(
                f'{err} With the example input ({e2})') from e2
        gm = _graph_module(tracer.root, graph, type(model).__name__)
        gm.meta['concrete_trace'] = str(err)
        return gm
    return _graph_module(tracer.root, graph, type(model).__name__)


def _graph_module(root: nn.Module, graph: fx.Graph, name: str
                  ) -> fx.GraphModule:
    """``GraphModule(root, graph, name)`` (code generated lazily). torch's
    constructor copies the container path to every called module: the
    trace keeps its own module tree, so a caller that later replaces a
    block of the model (layer fusion) still finds the traced names. Linking
    the model's top-level modules instead saved ~3 ms on ResNet-56 but let
    such edits break the trace."""
    return _GraphModule(root, graph, name)


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
        if cls.__module__.startswith('torch.nn.') or _mode_is_a_flag(m):
            continue
        if _forward_reads_training(cls):
            return True
    return False


def _mode_is_a_flag(m: nn.Module) -> bool:
    """Drop modules whose train-mode trace differs from the eval one only
    by a flag argument: torchvision's ``StochasticDepth`` calls the
    FX-wrapped ``stochastic_depth(x, p, mode, self.training)``, and timm's
    ``DropPath`` with ``drop_prob == 0`` returns its input in both modes.
    Tracing those models twice only to find the same graph was a third of
    an EfficientNet-B0 graph build."""
    cls = type(m)
    if cls.__module__ == 'torchvision.ops.stochastic_depth':
        return cls.__name__ == 'StochasticDepth'
    if cls.__module__ == 'timm.layers.drop' and cls.__name__ == 'DropPath':
        return not getattr(m, 'drop_prob', 1.0)
    return False


def set_train_mode(model: nn.Module, training: bool) -> bool:
    """``model.train(training)``, skipped when every module already is in
    that mode (same result): graph building switches modes several times and
    ``train()`` ``setattr``s every module or runs a slow override
    (mmpretrain's backbones).

    Returns:
        Whether any module changed mode.
    """
    if any(m.training != training for m in model.modules()):
        model.train(training)
        return True
    return False


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
    # equal shapes (a residual add) skip broadcast_shapes, a Python ref
    return _meta_like(a, a.shape if a.shape == b.shape else
                      torch.broadcast_shapes(a.shape, b.shape))


class MetaInterpreter(fx.Interpreter):
    """An ``fx.Interpreter`` with a shape-only mode.

    With ``meta=True`` the inputs are expected on the meta device: leaf
    modules and binary ops with a shape formula (:func:`meta_module_output`,
    :func:`meta_function_output`) return an empty meta tensor without
    running anything; any other module runs its real forward on meta copies
    of its own parameters and buffers, and ``get_attr`` tensors come back as
    meta copies. Nothing in the real model changes.

    Args:
        gm: The traced module.
        meta: Shape-only mode.
    """

    def __init__(self, gm: fx.GraphModule, meta: bool = False):
        super().__init__(gm)
        self.meta = meta

    def module_of(self, target: str) -> nn.Module:
        """The submodule called by a ``call_module`` node."""
        # ``submodules`` (built by Interpreter) saves fetch_attr's attribute
        # walk; a module registered under two names is only under its first
        m = self.submodules.get(target)
        return self.fetch_attr(target) if m is None else m

    def call_module(self, target, args, kwargs):
        m = self.module_of(target)
        if not self.meta:
            return m(*args, **kwargs)
        out = meta_module_output(m, args, kwargs)
        if out is not None:
            return out
        # swapping only this module's tensors (not the whole model's up
        # front) costs nothing for the layers that have a formula
        state = {k: torch.empty_like(v, device='meta') for k, v in
                 list(m.named_parameters()) + list(m.named_buffers())}
        if not state:
            return m(*args, **kwargs)
        with _reparametrize_module(m, state):
            return m(*args, **kwargs)

    def get_attr(self, target, args, kwargs):
        out = super().get_attr(target, args, kwargs)
        if self.meta and isinstance(out, torch.Tensor):
            return torch.empty_like(out, device='meta')
        return out

    def call_function(self, target, args, kwargs):
        if self.meta:
            if target is F.batch_norm and args and \
                    isinstance(args[0], torch.Tensor):
                # a norm module traced through (timm's BatchNormAct2d)
                return args[0]
            out = meta_function_output(target, args, kwargs)
            if out is not None:
                return out
        return super().call_function(target, args, kwargs)


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
