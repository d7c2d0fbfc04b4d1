"""The project's single FX tracer.

Every component that needs a graph (channel analysis, FLOPs counting,
sparsity layer selection, fusion) calls :func:`trace_model`; nothing else in
the code base creates an ``torch.fx.Tracer``.
"""
from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from .layer_kinds import is_layer_kind_class

__all__ = ['TraceError', 'trace_model', 'default_concrete_args',
           'node_outputs_module']


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
