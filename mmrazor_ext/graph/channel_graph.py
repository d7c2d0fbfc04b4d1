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
from .size_provenance import track_size
from .slots import (
    FIXED,
    NONE,
    SlotUnion,
    compress,
    full_like_shape,
    group_components,
    long_tensor,
)
from .tracer import (
    MetaInterpreter,
    default_concrete_args,
    graph_depends_on_mode,
    same_graph_up_to_flags,
    set_train_mode,
    trace_model,
)

__all__ = ['ChannelSpace', 'ChannelGraph', 'LayerRecord', 'TensorPath',
           'UnsupportedOpError', 'run_tensor_forward']



_NDIM_KEY = 'mmrazor_ext_ndim'
_CALL_OPS = frozenset(['call_module', 'call_function', 'call_method'])


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


class _Analyzer(MetaInterpreter):
    """Interprets the graph (on meta or real tensors) and applies channel
    rules."""

    def __init__(self, gm: fx.GraphModule, graph: ChannelGraph,
                 meta: bool = False):
        super().__init__(gm, meta)
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

    # -- interpretation -------------------------------------------------------
    def run_node(self, n: fx.Node):
        self.node = n
        op = n.op
        if op in _CALL_OPS:
            # args fetched once, for the call and the rule
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            out = getattr(self, op)(n.target, args, kwargs)
            self.senv[n] = self._infer(n, out, args, kwargs)
        else:
            out = super().run_node(n)
            if op == 'output':
                _map_slots(self.union.fix, fx.node.map_arg(
                    n.args, lambda a: self.senv.get(a)))
                return out
            self.senv[n] = self._infer(n, out, None, None)
        if isinstance(out, torch.Tensor):
            n.meta[_NDIM_KEY] = out.ndim  # for conv_bn_pairs' Linear check
        return out

    def _slots_of_placeholder(self, out):
        if isinstance(out, torch.Tensor):
            return full_like_shape(out.ndim, FIXED)
        if isinstance(out, (tuple, list)):
            return tuple(self._slots_of_placeholder(o) for o in out)
        return None

    def _infer(self, n: fx.Node, out, args, kwargs):
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
        senv = self.senv
        sargs = fx.node.map_arg(n.args, senv.get)
        skwargs = fx.node.map_arg(n.kwargs, senv.get) if n.kwargs else {}
        if n.op == 'call_module':
            m = self.module_of(n.target)
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
        if not _has_tensor(out) and n.target is not operator.setitem:
            track_size(self.size_prov, n, args, sargs)
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
        self.size_sites: dict = {}  # literal split sizes (rules.SizeSite)
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
        self.size_sites = {}

    def _analyse(self, gm: fx.GraphModule, model: nn.Module, training: bool,
                 meta: bool):
        inputs = self.example_inputs
        if training:
            # train-mode BN needs more than one value per channel
            inputs = tuple(torch.cat([x, x]) if isinstance(x, torch.Tensor)
                           and x.ndim > 0 and x.shape[0] == 1 else x
                           for x in inputs)
        if training:  # the caller (_build) holds the model in eval mode
            model.train()
        try:
            if meta:
                # shapes only, on meta tensors (see MetaInterpreter)
                inputs = tuple(torch.empty_like(x, device='meta')
                               if isinstance(x, torch.Tensor) else x
                               for x in inputs)
                with torch.no_grad():
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
            if training:
                model.eval()

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
        self.root = model  # rules bind literal split sizes to its attributes
        was_training = model.training
        # eval mode for tracing and analysis; every switch walks all modules,
        # so the mode is restored once, and only if anything changed
        changed = set_train_mode(model, False)
        try:
            self.gm = trace_model(model, leaf_modules=leaf_modules,
                                  example_inputs=self.example_inputs)
            gm_train = None
            if trace_train and graph_depends_on_mode(model):
                changed = True
                model.train()
                try:
                    gm_train = trace_model(
                        model, leaf_modules=leaf_modules,
                        example_inputs=self.example_inputs)
                finally:
                    model.eval()
            graphs = [(self.gm, False)]
            if gm_train is not None and not same_graph_up_to_flags(
                    self.gm.graph, gm_train.graph, _flags_ignored):
                graphs.append((gm_train, True))
            self._analyse_all(model, graphs)
        finally:
            if changed:
                set_train_mode(model, was_training)
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
        producers = []
        recs = [rec for rec in self.layers.values() if rec.producer]
        # roots of all producers' outputs in one gather, then plain lists
        # (one torch op per producer cost more than the list work)
        flat = self._roots[torch.cat(
            [rec.out_slots.reshape(-1) for rec in recs])].tolist() \
            if recs else []
        start = 0
        for rec in recs:
            n = rec.out_slots.numel()
            all_roots = flat[start:start + n]
            start += n
            # unique roots in order of first appearance
            roots = [r for r in dict.fromkeys(all_roots) if r != FIXED]
            if not roots:
                continue
            producers.append((rec, roots, all_roots))
        comp_of = group_components([roots for _, roots, _ in producers])
        order: dict[int, dict[int, None]] = {}
        first: dict[int, LayerRecord] = {}
        first_roots: dict[int, list[int]] = {}
        for (rec, roots, all_roots), comp in zip(producers, comp_of):
            if comp not in first:
                first[comp] = rec
                first_roots[comp] = all_roots
            order.setdefault(comp, {}).update(dict.fromkeys(roots))
        self.spaces: dict[str, ChannelSpace] = {}
        pos = torch.full((len(u),), -1, dtype=torch.long)
        unit_roots: list[int] = []
        for comp, roots in order.items():
            roots = list(roots)
            name = first[comp].name
            unit = max(1, first_roots[comp].count(roots[0]))
            space = ChannelSpace(name, [], torch.ones(len(roots), dtype=bool),
                                 unit, roots)
            self.spaces[name] = space
            unit_roots.extend(roots)
        offset = len(unit_roots)  # roots of different spaces are distinct
        if unit_roots:
            pos[long_tensor(unit_roots)] = torch.arange(offset)
        self.num_units = offset
        pos[pos < 0] = offset
        self._pos = pos
        for site in self.size_sites.values():
            site.index = self._index(site.slots)
        self._index_layers()

    def _index_layers(self) -> None:
        """``in_index`` / ``out_index`` of every layer and the members of
        every space, from one gather over all layers' slots (per-layer
        torch ops dominated this step)."""
        self.__dict__.pop('_producer_units', None)  # keep_one_per_producer
        space_list = list(self.spaces.values())
        nsp = len(space_list)
        entries = [(rec, role, slots) for rec in self.layers.values()
                   for role, slots in (('in', rec.in_slots),
                                       ('out', rec.out_slots))
                   if slots is not None]
        if not entries:
            return
        sizes = [s.numel() for _, _, s in entries]
        flat = self._index(torch.cat([s.reshape(-1) for _, _, s in entries]))
        for (rec, role, slots), idx in zip(entries, flat.split(sizes)):
            setattr(rec, f'{role}_index', idx.reshape(slots.shape))
        if not nsp:
            return
        unit_space = torch.cat([torch.repeat_interleave(
            torch.arange(nsp),
            torch.tensor([sp.num_channels for sp in space_list])),
            torch.tensor([-1])])  # the last unit: fixed, in no space
        spc = unit_space[flat]
        seg = torch.repeat_interleave(torch.arange(len(entries)),
                                      torch.tensor(sizes))
        keep = spc >= 0
        # (layer entry, space) pairs, sorted: entries in graph order, the
        # spaces of one entry ascending (the order members are listed in);
        # a flag table instead of unique's sort
        hit = torch.zeros(len(entries) * nsp, dtype=torch.bool)
        hit[seg[keep] * nsp + spc[keep]] = True
        for key in hit.nonzero().reshape(-1).tolist():
            rec, role, _ = entries[key // nsp]
            space_list[key % nsp].members.append(
                (rec.name, 'param' if rec.kind == 'param' else role))

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
        # a concat input must keep a channel (see keep_one_per_producer)
        from .export import keep_one_per_producer
        return keep_one_per_producer(self, torch.cat(parts))

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
