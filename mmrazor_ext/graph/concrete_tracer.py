"""Tracing through Python control flow on sizes, with the example input.

torch.fx's symbolic trace cannot take a branch on a traced size (``if H %
window:``), call ``len`` / ``int`` on one, or unpack a traced tuple whose
length the bytecode does not show: window attention, pooled attention and
patch embeddings of many ViT-style timm families do all three. Here every
proxy also carries the value the node has on the example input (computed
alongside the trace, op by op), and Python asks those values when it needs
a concrete answer. Sizes stay graph nodes wherever the code only computes
with them, so reshapes still follow pruned channels; only the answers Python
forces (a branch taken, a loop unrolled, an ``int``) are specialised to the
example input's shape.

A branch on tensor *data* (``if x.max() > 0``) still fails: the graph would
hold only the example input's branch.

:func:`~mmrazor_ext.graph.tracer.trace_model` falls back to this tracer when
the symbolic trace fails and an example input is known.
"""
from __future__ import annotations

import functools
import inspect
import operator
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from .tracer import LeafTracer, TraceError

__all__ = ['ConcreteTracer', 'concrete_trace']


# tensor attributes answered with the example value's (``autocast`` needs a
# real device type); none of them depends on a channel count
_SPECIALISED = frozenset(['device', 'dtype', 'layout', 'is_cuda',
                          'is_sparse', 'is_quantized', 'is_meta'])


class _ConcreteMixin:
    """The Python protocols a symbolic proxy refuses, answered from the
    node's value on the example input."""

    def _value(self):
        raise NotImplementedError

    def _plain(self, what: str):
        v = self._value()
        if isinstance(v, torch.Tensor):
            raise TraceError(
                f'{what} of a tensor computed from the input data (node '
                f"'{self.node.name}'): the graph would hold only the example "
                "input's branch. Mark the module that does this with "
                'leaf_modules=(...) and ignore_layers=(...).')
        return v

    def __bool__(self):
        return bool(self._plain('a Python branch on the value'))

    def __int__(self):
        return int(self._plain('int()'))

    def __index__(self):
        return operator.index(self._plain('an integer index'))

    def __float__(self):
        return float(self._plain('float()'))

    def __len__(self):
        v = self._value()
        return v.shape[0] if isinstance(v, torch.Tensor) else len(v)

    def __iter__(self):
        # one getitem node per element: unpacked sizes stay traced
        return iter([self[i] for i in range(len(self))])

    def __getattr__(self, k):
        if k in _SPECIALISED:
            v = self._value()
            if isinstance(v, torch.Tensor):
                return getattr(v, k)  # where it runs, not what it holds
        return ConcreteAttribute(self, k)

    def __setitem__(self, key, value):
        # in place on the example value too (value_of runs the node)
        self.tracer.create_proxy('call_function', operator.setitem,
                                 (self, key, value), {})


class ConcreteProxy(_ConcreteMixin, fx.Proxy):
    """A proxy whose node's example value is known."""

    def _value(self):
        return self.tracer.value_of(self.node)


class ConcreteAttribute(_ConcreteMixin, fx.proxy.Attribute):
    """``proxy.attr`` (a node only once used as a value)."""

    def _value(self):
        return getattr(self.root._value(), self.attr)


class ConcreteTracer(LeafTracer):
    """:class:`~mmrazor_ext.graph.tracer.LeafTracer` running every recorded
    op on the example input as it records it.

    Args:
        example_inputs: Positional inputs of ``root.forward``.
        leaf_classes: See ``LeafTracer``.
        leaf_names: See ``LeafTracer``.
    """

    def __init__(self, example_inputs: Sequence[Any],
                 leaf_classes: tuple[type, ...] = (),
                 leaf_names: frozenset[str] = frozenset()):
        super().__init__(leaf_classes, leaf_names)
        self.example_inputs = tuple(example_inputs)
        self.values: dict[fx.Node, Any] = {}
        self._inputs: dict[str, Any] = {}
        self._executing = False

    # -- the trace ------------------------------------------------------------
    def trace(self, root, concrete_args=None):
        fn = root.forward if isinstance(root, nn.Module) else root
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        self._inputs = {p.name: x for p, x in zip(params,
                                                   self.example_inputs)}
        # an optional argument not given keeps its default: as a proxy it
        # would pass `if mask is not None` into a path the input never takes
        concrete_args = dict(concrete_args or {})
        for p in params[len(self.example_inputs):]:
            if p.default is not p.empty:
                concrete_args.setdefault(p.name, p.default)
        for name, x in concrete_args.items():
            self._inputs[f'{name}_1'] = x  # how torch.fx names them
        return super().trace(root, concrete_args)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return ConcreteProxy(node, self)

    def create_proxy(self, kind, target, args, kwargs, name=None,
                     type_expr=None, proxy_factory_fn=None):
        proxy = super().create_proxy(kind, target, args, kwargs, name,
                                     type_expr, proxy_factory_fn)
        self.value_of(proxy.node)
        return proxy

    def call_module(self, m, forward, args, kwargs):
        if self._executing:  # a leaf's own children, run for its value
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        if self._executing:
            return attr_val
        out = super().getattr(attr, attr_val, parameter_proxy_cache)
        if isinstance(attr_val, torch.Tensor) and \
                not isinstance(out, fx.Proxy):
            # a buffer the forward replaced during this trace (a cache
            # rebuilt for the input size): a fresh node with its new value
            self._names_cache = None
            name = self._tensor_name(attr_val, False)
            if name is not None:
                return self.create_proxy('get_attr', name, (), {})
        return out

    # -- values ---------------------------------------------------------------
    def value_of(self, node: fx.Node) -> Any:
        """The value of ``node`` on the example input (computed once)."""
        if node in self.values:
            return self.values[node]
        args = fx.node.map_arg(node.args, self.value_of)
        kwargs = fx.node.map_arg(node.kwargs, self.value_of)
        was, self._executing = self._executing, True
        try:
            with torch.no_grad():
                value = self._run(node, args, kwargs)
        except TraceError:
            raise
        except Exception as e:
            raise TraceError(
                f"running node '{node.name}' ({node.op} {node.target}) on "
                f'the example input failed: {type(e).__name__}: {e}') from e
        finally:
            self._executing = was
        self.values[node] = value
        return value

    def _run(self, node, args, kwargs):
        op, target = node.op, node.target
        if op == 'placeholder':
            if target in self._inputs:
                return self._inputs[target]
            if args:
                return args[0]  # the parameter's default
            raise TraceError(f"no example input for argument '{target}'")
        if op == 'get_attr':
            return functools.reduce(getattr, target.split('.'), self.root)
        if op == 'call_function':
            return target(*args, **kwargs)
        if op == 'call_method':
            return getattr(args[0], target)(*args[1:], **kwargs)
        if op == 'call_module':
            # through __call__ (hooks run); its children run directly. In
            # eval mode: a leaf's output shape does not depend on it, and a
            # train-mode BN would reject a batch of one 1x1 map
            m = self.root.get_submodule(target)
            was = m.training
            m.train(False)
            try:
                return m(*args, **kwargs)
            finally:
                m.train(was)
        return None


def concrete_trace(root: nn.Module, example_inputs: Sequence[Any],
                   leaf_classes: tuple[type, ...], leaf_names: frozenset[str],
                   concrete_args: dict[str, Any] | None
                   ) -> tuple[ConcreteTracer, fx.Graph]:
    """Trace ``root`` with :class:`ConcreteTracer`; the module's buffers and
    the global RNG are as before (a train-mode BN or dropout runs along).

    Returns:
        ``(tracer, graph)``.
    """
    tracer = ConcreteTracer(example_inputs, leaf_classes, leaf_names)
    saved = [(m, k, b, b.detach().clone()) for m in root.modules()
             for k, b in m._buffers.items() if b is not None]
    try:
        with torch.random.fork_rng(devices=[]):
            graph = tracer.trace(root, concrete_args=concrete_args)
    finally:
        with torch.no_grad():
            for m, k, b, v in saved:
                m._buffers[k] = b
                b.copy_(v)
    return tracer, graph
