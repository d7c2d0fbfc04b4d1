"""Channel dependency analysis: FX graph -> ChannelSpaces.

The model is traced (eval mode, and train mode too when its graph differs,
e.g. auxiliary heads) and interpreted once on the example inputs; at every
node a rule from :mod:`.rules` maps the slot tensors of the inputs to the
output's and unions the slots that must be pruned together. Afterwards:

* every layer that owns per-channel weights has ``in`` / ``out`` slot lists;
* a **ChannelSpace** is a connected set of slots created by producers
  (conv / linear outputs) -- its units are the union-find roots; units that
  are tied to ``FIXED`` are never pruned and are not part of any space.
"""
from __future__ import annotations

import fnmatch
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from . import layer_kinds, module_rules  # noqa: F401  (register rules)
from .detection_rules import traceable_view
from .patterns import conv_bn_pairs
from .rules import FUNCTION_RULES, lookup_module_rule, opaque, unary
from .slots import FIXED, NONE, SlotUnion, compress, full_like_shape
from .tracer import (
    default_concrete_args,
    graph_depends_on_mode,
    meta_function_output,
    meta_module_output,
    same_graph_up_to_flags,
    set_train_mode,
    trace_model,
)

try:  # what torch.func.functional_call uses internally
    from torch.nn.utils.stateless import _reparametrize_module
except ImportError:  # pragma: no cover
    from torch.func import functional_call as _fc  # noqa: F401
    raise

__all__ = ['ChannelSpace', 'ChannelGraph', 'LayerRecord', 'TensorPath',
           'UnsupportedOpError', 'run_tensor_forward']



_NDIM_KEY = 'mmrazor_ext_ndim'


def _flags_ignored(n: fx.Node) -> bool:
    # pass-through / opaque rules read no flag (a drop path's `training`)
    return n.op in ('call_function', 'call_method') and \
        FUNCTION_RULES.get(n.target) in (unary, opaque)


class UnsupportedOpError(RuntimeError):
    """An op in the traced graph has no channel rule."""


@dataclass
class LayerRecord:
    """Channel slots of one layer (a module or a ``get_attr`` tensor).

    Attributes:
        name: Qualified name in the model.
        kind: Name of its layer kind (``conv``, ``linear``, ``bn`` ...,
            see :mod:`.layer_kinds`) or ``param`` for a free tensor.
        in_slots: Slot id per input channel (or ``None``).
        out_slots: Slot id per output channel (per element for ``param``).
        producer: Whether the layer creates new channels (conv, linear).
    """

    name: str
    kind: str
    in_slots: torch.Tensor | None = None
    out_slots: torch.Tensor | None = None
    producer: bool = False
    in_index: torch.Tensor | None = None  # filled by ChannelGraph._index
    out_index: torch.Tensor | None = None


@dataclass
class ChannelSpace:
    """A group of layer channels sharing one ``out_mask``.

    Attributes:
        name: Name of the first layer (in graph order) producing it.
        members: ``(layer name, role)`` pairs with channels in this space;
            role is ``out`` (output channels), ``in`` (input channels of a
            consumer) or ``param`` (a free tensor such as a layer scale).
        out_mask: Boolean keep mask, one entry per unit.
        unit_size: Channels of the first producer per unit (>1 when whole
            groups of a grouped conv / GroupNorm are the unit).
    """

    name: str
    members: list[tuple[str, str]]
    out_mask: torch.Tensor
    unit_size: int = 1
    roots: list[int] = field(default_factory=list, repr=False)

    @property
    def num_channels(self) -> int:
        """Number of independently prunable units."""
        return len(self.roots)

    def __repr__(self) -> str:
        return (f'ChannelSpace({self.name!r}, num_channels='
                f'{self.num_channels}, kept={int(self.out_mask.sum())}, '
                f'members={len(self.members)})')


def run_tensor_forward(model: nn.Module, inputs: Sequence[torch.Tensor]):
    """Call ``model`` on its tensor path (``mode='tensor'`` for mmengine)."""
    model = traceable_view(model)  # a detector: its network only
    extra = default_concrete_args(model) or {}
    return model(*inputs, **extra)


class TensorPath(nn.Module):
    """``model``'s tensor path as a one-input module returning the logits
    (ONNX export, latency measurement of mmengine models)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        out = run_tensor_forward(self.model, (x,))
        return out[-1] if isinstance(out, (tuple, list)) else out


def _target_name(node: fx.Node) -> str:
    t = node.target
    if isinstance(t, str):
        return t if node.op != 'call_method' else f'Tensor.{t}'
    mod = getattr(t, '__module__', None) or ''
    return f'{mod}.{getattr(t, "__qualname__", repr(t))}'.lstrip('.')


def _owner(node: fx.Node) -> str:
    stack = node.meta.get('nn_module_stack') or {}
    return next(reversed(stack.keys()), '') if stack else ''


def _has_tensor(x) -> bool:
    if isinstance(x, torch.Tensor):
        return True
    if isinstance(x, (tuple, list)):
        return any(_has_tensor(y) for y in x)
    if isinstance(x, dict):
        return any(_has_tensor(y) for y in x.values())
    return False


def _map_slots(fn, s):
    if isinstance(s, torch.Tensor):
        fn(s)
    elif isinstance(s, (tuple, list)):
        for y in s:
            _map_slots(fn, y)
    elif isinstance(s, dict):
        for y in s.values():
            _map_slots(fn, y)


class _Analyzer(fx.Interpreter):
    """Interprets the graph on real tensors and applies channel rules."""

    def __init__(self, gm: fx.GraphModule, graph: ChannelGraph,
                 meta: bool = False):
        super().__init__(gm)
        self.meta = meta
        self.cg = graph
        self.union = graph.union
        self.senv: dict[fx.Node, Any] = {}
        self.size_prov: dict[fx.Node, Any] = {}
        self.node: fx.Node | None = None
        self.module_name = ''
        if hasattr(self.union, 'bind'):  # a reason-recording union (report)
            self.union.bind(self)

    # -- context API used by rules ------------------------------------------
    def add_member(self, kind: str, in_slots=None, out_slots=None,
                   producer: bool = False) -> None:
        self.cg._add_layer(self.module_name, kind, in_slots, out_slots,
                           producer)

    def _track_size(self, n: fx.Node, args, sargs) -> None:
        """Remember which tensor dim an int / shape value was read from
        (``x.size(1)``, ``x.shape[1]``), so that a reshape to that size is
        known to follow that dim when it is pruned."""
        prov = None
        if n.op == 'call_method' and n.target == 'size' and \
                isinstance(args[0], torch.Tensor):
            if len(args) > 1 or 'dim' in n.kwargs:
                d = args[1] if len(args) > 1 else n.kwargs['dim']
                prov = (sargs[0], d % args[0].ndim)
            else:
                prov = [(sargs[0], i) for i in range(args[0].ndim)]
        elif n.op == 'call_function' and n.target is getattr and \
                len(args) > 1 and args[1] == 'shape' and \
                isinstance(args[0], torch.Tensor):
            prov = [(sargs[0], i) for i in range(args[0].ndim)]
        elif n.op == 'call_function' and n.target is operator.getitem and \
                isinstance(n.args[0], fx.Node) and \
                isinstance(self.size_prov.get(n.args[0]), list) and \
                isinstance(args[1], int):
            prov = self.size_prov[n.args[0]][args[1]]
        if prov is not None:
            self.size_prov[n] = prov

    # -- interpretation -------------------------------------------------------
    def call_module(self, target, args, kwargs):
        if self.meta:  # shapes only: skip slow meta kernels where possible
            out = meta_module_output(self.fetch_attr(target), args, kwargs)
            if out is not None:
                return out
        return super().call_module(target, args, kwargs)

    def call_function(self, target, args, kwargs):
        if self.meta and target is torch.nn.functional.batch_norm and \
                args and isinstance(args[0], torch.Tensor):
            # a norm module traced through (timm's BatchNormAct2d): same
            # shortcut as for BN modules above
            return args[0]
        out = meta_function_output(target, args, kwargs) if self.meta \
            else None
        return out if out is not None else \
            super().call_function(target, args, kwargs)

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        self.node = n
        if n.op == 'output':
            _map_slots(self.union.fix, fx.node.map_arg(
                n.args, lambda a: self.senv.get(a)))
            return out
        self.senv[n] = self._infer(n, out)
        if isinstance(out, torch.Tensor):
            n.meta[_NDIM_KEY] = out.ndim  # for conv_bn_pairs' Linear check
        return out

    def _slots_of_placeholder(self, out):
        if isinstance(out, torch.Tensor):
            return full_like_shape(out.ndim, FIXED)
        if isinstance(out, (tuple, list)):
            return tuple(self._slots_of_placeholder(o) for o in out)
        return None

    def _infer(self, n: fx.Node, out):
        if n.op == 'placeholder':
            return self._slots_of_placeholder(out)
        if n.op == 'get_attr':
            if isinstance(out, torch.Tensor) and out.is_floating_point() \
                    and out.ndim > 0 and out.numel() > 0:
                # a free tensor (layer scale, positional embedding, or a
                # weight used functionally): fresh slots along its last
                # non-singleton dim, broadcast along the others
                dims = [d for d in range(out.ndim) if out.shape[d] > 1]
                d = dims[-1] if dims else out.ndim - 1
                shape = [1] * out.ndim
                shape[d] = out.shape[d]
                slots = self.union.new(out.shape[d]).reshape(shape)
                self.cg._add_param(n.target, slots)
                return slots
            return self._slots_of_placeholder(out)
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        sargs = fx.node.map_arg(n.args, lambda a: self.senv.get(a))
        skwargs = fx.node.map_arg(n.kwargs, lambda a: self.senv.get(a))
        if n.op == 'call_module':
            m = self.fetch_attr(n.target)
            self.module_name = n.target
            rule = lookup_module_rule(m)
            if rule is None:
                if self.cg._ignored(n.target):
                    return opaque(self, args, kwargs, sargs, skwargs, out)
                raise UnsupportedOpError(
                    f"No channel rule for module type {type(m).__module__}."
                    f"{type(m).__qualname__} (node '{n.name}', module "
                    f"'{n.target}'). Register one with "
                    '@mmrazor_ext.graph.register_module_rule('
                    f'{type(m).__name__}) or list \'{n.target}\' in '
                    'ignore_layers to leave its channels unpruned.')
            return rule(self, m, args, kwargs, sargs, skwargs, out)
        # call_function / call_method
        if not _has_tensor(out):
            self._track_size(n, args, sargs)
            return None  # size arithmetic, asserts ...
        rule = FUNCTION_RULES.get(n.target)
        if rule is None and isinstance(n.target, type) and \
                issubclass(n.target, (tuple, list)):
            # building a (named) tuple of outputs, e.g. GoogLeNetOutputs
            return tuple(sargs) + tuple(skwargs.values())
        if rule is None:
            owner = _owner(n)
            if self.cg._ignored(owner):
                return opaque(self, args, kwargs, sargs, skwargs, out)
            how = (f"register_function_rule('{n.target}')"
                   if n.op == 'call_method' else
                   f'register_function_rule({_target_name(n)})')
            raise UnsupportedOpError(
                f"No channel rule for op '{_target_name(n)}' (node "
                f"'{n.name}', inside module '{owner or '<root>'}'). Register "
                f'one with @mmrazor_ext.graph.{how}, or list '
                f"'{owner or '<module>'}' in ignore_layers to leave its "
                'channels unpruned.')
        return rule(self, args, kwargs, sargs, skwargs, out)


class ChannelGraph:
    """Channel dependency graph of a model.

    Args:
        model: The model (an mmengine model is analysed on its tensor path).
        example_inputs: Tensor or tuple of tensors for one forward pass.
        ignore_layers: Qualified names (or glob patterns / prefixes) of
            layers whose output channels are never pruned; unknown ops inside
            them are treated as opaque instead of raising.
        leaf_modules: Extra leaf modules for the tracer.
        trace_train: Also analyse the train-mode graph when it differs from
            the eval-mode one (e.g. auxiliary classifiers).

    Attributes:
        layers: ``{name: LayerRecord}`` in graph order.
        spaces: ``{name: ChannelSpace}`` (prunable ones only).
        gm: The eval-mode ``GraphModule``.
    """

    def __init__(self, model: nn.Module,
                 example_inputs: torch.Tensor | Sequence[torch.Tensor],
                 ignore_layers: Iterable[str] = (),
                 leaf_modules: Iterable[type | str] = (),
                 trace_train: bool = True):
        if isinstance(example_inputs, torch.Tensor):
            example_inputs = (example_inputs,)
        self.example_inputs = tuple(example_inputs)
        self.ignore_layers = tuple(ignore_layers)
        self.union = SlotUnion()
        self.layers: dict[str, LayerRecord] = {}
        self.conv_bn_pairs: list[tuple[str, str]] = []
        leaf_modules = tuple(leaf_modules)
        self._build(model, leaf_modules, trace_train)

    # -- building ---------------------------------------------------------------
    def _ignored(self, name: str) -> bool:
        for pat in self.ignore_layers:
            if name == pat or name.startswith(pat + '.') or \
                    fnmatch.fnmatchcase(name, pat):
                return True
        return False

    def _add_layer(self, name, kind, in_slots, out_slots, producer):
        rec = self.layers.get(name)
        if rec is None:
            self.layers[name] = LayerRecord(name, kind, in_slots, out_slots,
                                            producer)
            return
        # a module called more than once: one set of weights, one mask
        for a, b in ((rec.in_slots, in_slots), (rec.out_slots, out_slots)):
            if a is not None and b is not None:
                self.union.union_tensors(a, b)

    def _add_param(self, name, slots):
        rec = self.layers.get(name)
        if rec is None:
            self.layers[name] = LayerRecord(name, 'param', None, slots)
        else:
            self.union.union_tensors(rec.out_slots, slots)

    def new_union(self) -> SlotUnion:
        """The union-find of one analysis (a subclass may record more, see
        :mod:`mmrazor_ext.pruners.report`)."""
        return SlotUnion()

    def _reset(self):
        self.union = self.new_union()
        self.layers = {}

    def _analyse(self, gm: fx.GraphModule, model: nn.Module, training: bool,
                 meta: bool):
        inputs = self.example_inputs
        if training:
            # train-mode BN needs more than one value per channel
            inputs = tuple(torch.cat([x, x]) if isinstance(x, torch.Tensor)
                           and x.ndim > 0 and x.shape[0] == 1 else x
                           for x in inputs)
        was_training = model.training
        set_train_mode(model, training)
        try:
            if meta:
                # shapes only: parameters, buffers and inputs on the meta
                # device (no compute, nothing in the real model changes)
                state = {k: torch.empty_like(v, device='meta')
                         for k, v in list(gm.named_parameters()) +
                         list(gm.named_buffers())}
                inputs = tuple(torch.empty_like(x, device='meta')
                               if isinstance(x, torch.Tensor) else x
                               for x in inputs)
                with torch.no_grad(), _reparametrize_module(gm, state):
                    _Analyzer(gm, self, meta=True).run(*inputs)
                return
            buffers = {k: v.clone() for k, v in model.named_buffers()}
            try:
                with torch.no_grad():
                    _Analyzer(gm, self).run(*inputs)
            finally:
                # BN running stats etc. must be untouched by the analysis
                with torch.no_grad():
                    for k, v in model.named_buffers():
                        if k in buffers and v.shape == buffers[k].shape:
                            v.copy_(buffers[k])
        finally:
            set_train_mode(model, was_training)

    def _analyse_all(self, model, graphs):
        try:
            self._reset()
            for gm, training in graphs:
                self._analyse(gm, model, training, meta=True)
        except UnsupportedOpError:
            raise
        except Exception:  # data-dependent op: needs real values
            self._reset()
            for gm, training in graphs:
                self._analyse(gm, model, training, meta=False)

    def _build(self, model, leaf_modules, trace_train):
        model = traceable_view(model)  # a detector: its network only
        was_training = model.training
        try:
            set_train_mode(model, False)
            self.gm = trace_model(model, leaf_modules=leaf_modules)
            if trace_train and graph_depends_on_mode(model):
                model.train()
                gm_train = trace_model(model, leaf_modules=leaf_modules)
            else:
                gm_train = None
        finally:
            set_train_mode(model, was_training)
        graphs = [(self.gm, False)]
        if gm_train is not None and not same_graph_up_to_flags(
                self.gm.graph, gm_train.graph, _flags_ignored):
            graphs.append((gm_train, True))
        self._analyse_all(model, graphs)
        self._find_conv_bn(self.gm)
        for name, rec in self.layers.items():
            if rec.out_slots is not None and rec.kind != 'param' and \
                    self._ignored(name):
                self.union.fix(rec.out_slots)
        self._make_spaces()

    def _find_conv_bn(self, gm):
        self.conv_bn_pairs = conv_bn_pairs(
            gm, lambda n: n.meta.get(_NDIM_KEY))

    def _make_spaces(self):
        u = self.union
        # root of every slot, once (vectorised look-ups below)
        self._roots = u.roots()
        # second-level union over roots: roots made by one producer belong
        # to one space
        parent: dict[int, int] = {}

        def pfind(x):
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        producers = []
        for rec in self.layers.values():
            if not rec.producer:
                continue
            roots = self._roots[rec.out_slots.reshape(-1)]
            roots = roots[roots != FIXED]
            if not roots.numel():
                continue
            # unique roots in order of first appearance
            uniq, inv = torch.unique(roots, return_inverse=True)
            first_pos = torch.full((uniq.numel(),), roots.numel())
            first_pos.scatter_reduce_(0, inv, torch.arange(roots.numel()),
                                      'amin')
            roots = uniq[torch.argsort(first_pos)].tolist()
            producers.append((rec, roots))
            for r in roots:
                parent.setdefault(r, r)
            a0 = pfind(roots[0])
            for r in roots[1:]:
                b0 = pfind(r)
                if a0 != b0:
                    parent[b0] = a0
        order: dict[int, dict[int, None]] = {}
        first: dict[int, LayerRecord] = {}
        for rec, roots in producers:
            comp = pfind(roots[0])
            first.setdefault(comp, rec)
            order.setdefault(comp, {}).update(dict.fromkeys(roots))
        self.spaces: dict[str, ChannelSpace] = {}
        pos = torch.full((len(u),), -1, dtype=torch.long)
        offset = 0
        for comp, roots in order.items():
            roots = list(roots)
            name = first[comp].name
            first_roots = self._roots[first[comp].out_slots.reshape(-1)]
            unit = max(1, int((first_roots == roots[0]).sum()))
            space = ChannelSpace(name, [], torch.ones(len(roots), dtype=bool),
                                 unit, roots)
            self.spaces[name] = space
            pos[torch.tensor(roots)] = torch.arange(offset,
                                                    offset + len(roots))
            offset += len(roots)
        self.num_units = offset
        pos[pos < 0] = offset
        self._pos = pos
        space_list = list(self.spaces.values())
        unit_space = torch.cat(
            [torch.full((sp.num_channels,), i, dtype=torch.long)
             for i, sp in enumerate(space_list)] +
            [torch.full((1,), -1, dtype=torch.long)])
        for rec in self.layers.values():
            for role, slots in (('in', rec.in_slots), ('out', rec.out_slots)):
                if slots is None:
                    continue
                idx = self._index(slots)
                if role == 'in':
                    rec.in_index = idx
                else:
                    rec.out_index = idx
                role_name = 'param' if rec.kind == 'param' else role
                for i in torch.unique(unit_space[idx]).tolist():
                    if i >= 0:
                        space_list[i].members.append((rec.name, role_name))

    def _index(self, slots: torch.Tensor) -> torch.Tensor:
        """Global unit index per entry (``num_units`` = always kept)."""
        return self._pos[self._roots[slots]]

    # -- queries ------------------------------------------------------------------
    def global_mask(self, masks: dict[str, torch.Tensor] | None = None
                    ) -> torch.Tensor:
        """Concatenate per-space masks (+ a trailing True for fixed units)."""
        parts = []
        for name, space in self.spaces.items():
            m = space.out_mask if masks is None or name not in masks \
                else masks[name]
            parts.append(torch.as_tensor(m, dtype=torch.bool).reshape(-1))
        parts.append(torch.ones(1, dtype=torch.bool))
        return torch.cat(parts)

    def layer_keep(self, rec: LayerRecord, gmask: torch.Tensor, role: str
                   ) -> torch.Tensor | None:
        """Keep mask of a layer's ``in`` / ``out`` channels (None = n/a)."""
        idx = rec.in_index if role == 'in' else rec.out_index
        return None if idx is None else gmask[idx]

    def channel_map(self, layer: str, role: str = 'out'
                    ) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        """Where the channels of ``layer`` live.

        Returns:
            ``[(space name, layer channel indices, space unit indices)]``,
            one entry per space touched; channels in no space are omitted.
        """
        rec = self.layers[layer]
        idx = rec.in_index if role == 'in' else rec.out_index
        if idx is None:
            return []
        idx = idx.reshape(-1)
        res, offset = [], 0
        for name, space in self.spaces.items():
            n = space.num_channels
            sel = ((idx >= offset) & (idx < offset + n)).nonzero().reshape(-1)
            if sel.numel():
                res.append((name, sel, idx[sel] - offset))
            offset += n
        return res

    def __repr__(self) -> str:
        return (f'ChannelGraph({len(self.spaces)} spaces, '
                f'{self.num_units} units, {len(self.layers)} layers)')


__all__ += ['NONE', 'compress']
