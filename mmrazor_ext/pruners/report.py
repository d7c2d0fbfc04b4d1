"""Why channels are pinned: the pruner's "no silent no-op" report.

A layer's output channels are *pinned* (in no ChannelSpace) when a rule of
the channel analysis tied them to ``FIXED``: they feed the model output,
the user ignored the layer, an op without a channel model consumed them, or
they are tied (residual add, grouped / depthwise conv, reshape) to channels
fixed for one of these reasons. The normal analysis only keeps the
union-find result, so :func:`pinned_report` analyses the model once more
with a union-find that replaces every ``fix`` by a union with a fresh
*reason slot* (which node fixed what); a pinned channel's component then
holds the reasons that pinned it. The normal build pays nothing for this.

:func:`check_prunable` turns the report into the error an algorithm raises
when its pruner has nothing to prune or cannot reach its target.
"""
from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import torch
from torch import nn

from mmrazor_ext.graph import ChannelGraph
from mmrazor_ext.graph.rules import lookup_module_rule
from mmrazor_ext.graph.slots import FIXED, SlotUnion

__all__ = ['PinnedRow', 'PinnedChannelsError', 'REASONS', 'pinned_report',
           'format_report', 'top_reasons', 'check_prunable']

#: reason categories, most specific first (the one shown per layer)
REASONS = ('ignored', 'output layer', 'leaf without rule',
           'group constraint', 'input / literal shape')
_RANK = {c: i for i, c in enumerate(REASONS)}


class PinnedChannelsError(ValueError):
    """A pruner has no prunable channel space, or its prunable channels
    cannot reach the requested reduction; the message names the top
    reasons from :func:`pinned_report`."""


class PinnedRow(NamedTuple):
    """One layer with pinned output channels.

    Attributes:
        layer: Qualified module name (or tensor name for ``param``).
        kind: Layer kind (``conv``, ``linear``, ``bn`` ...) or ``param``
            for the weight of a module traced through (functional conv).
        channels: Number of pinned output channels.
        space: The space holding its other channels (partly pinned
            layers), else None.
        reason: ``'<category>: <detail>'``, category from :data:`REASONS`.
    """

    layer: str
    kind: str
    channels: int
    space: str | None
    reason: str


def _target_name(node) -> str:
    t = node.target
    if isinstance(t, str):
        return t if node.op != 'call_method' else f'Tensor.{t}'
    return getattr(t, '__qualname__', repr(t))


def _owner(node) -> str:
    stack = node.meta.get('nn_module_stack') or {}
    return next(reversed(stack.keys()), '') if stack else ''


class _ReasonUnion(SlotUnion):
    """A union-find whose ``fix`` ties slots to a new reason slot instead of
    ``FIXED`` (the analysis never reads ``FIXED`` back, so it runs as
    usual)."""

    def __init__(self, graph: _ReasonGraph):
        super().__init__()
        self.graph = graph
        self.ctx = None
        self.reasons: dict[int, tuple[str, str]] = {}

    def bind(self, ctx) -> None:
        """Called by the analyser: gives access to the node being run."""
        self.ctx = ctx

    def fix(self, s: torch.Tensor | None) -> None:
        if s is None:
            return
        vals = torch.unique(s[s > FIXED]).tolist()
        if not vals:
            return
        r = int(self.new(1)[0])
        self.reasons[r] = self._why(s)
        for v in vals:
            self.union(v, r)

    def _why(self, s: torch.Tensor) -> tuple[str, str]:
        g = self.graph
        node = getattr(self.ctx, 'node', None)
        if node is None or node.op == 'output':
            for name, rec in g.layers.items():
                if rec.out_slots is s and g.is_ignored(name):
                    return 'ignored', f"'{name}' is in ignore_layers"
            return 'output layer', 'feeds the model output'
        if node.op == 'call_module':
            m = self.ctx.fetch_attr(node.target)
            cls = type(m).__name__
            if g.is_ignored(node.target):
                return 'ignored', f"inside ignored '{node.target}' ({cls})"
            rule = lookup_module_rule(m)
            if rule is None or getattr(rule, '__name__', '') == \
                    'opaque_module_rule':
                return ('leaf without rule', f"leaf module '{node.target}' "
                        f'({cls}) has no channel model')
            return 'group constraint', f"{cls} '{node.target}'"
        owner = _owner(node)
        if owner and g.is_ignored(owner):
            return 'ignored', f"inside ignored '{owner}'"
        return ('group constraint', f"op '{_target_name(node)}' in "
                f"'{owner or '<root>'}'")


class _ReasonGraph(ChannelGraph):
    """A ChannelGraph analysed with a :class:`_ReasonUnion`."""

    def new_union(self) -> SlotUnion:
        return _ReasonUnion(self)

    def is_ignored(self, name: str) -> bool:
        for pat in self.ignore_layers:
            if name == pat or name.startswith(pat + '.') or \
                    fnmatch.fnmatchcase(name, pat):
                return True
        return False


def _explain(graph: _ReasonGraph) -> dict[int, tuple[str, str]]:
    """``{component root: (category, detail)}`` of every pinned component
    (the most specific category; the first such reason in graph order)."""
    u = graph.union
    found: dict[int, list[tuple[str, str]]] = {}
    for r, why in sorted(u.reasons.items()):
        found.setdefault(u.find(r), []).append(why)
    out = {}
    for root, whys in found.items():
        best = min(whys, key=lambda w: _RANK[w[0]])
        more = len({w[1] for w in whys}) - 1
        detail = best[1] + (f' (+{more} more)' if more else '')
        out[root] = (best[0], detail)
    out[u.find(FIXED)] = ('input / literal shape', 'tied to the network '
                          'input or to a tensor of literal shape')
    return out


def pinned_report(model: nn.Module,
                  example_inputs: torch.Tensor | Sequence[torch.Tensor],
                  graph: ChannelGraph | None = None,
                  ignore_layers: Iterable[str] = (),
                  leaf_modules: Iterable[type | str] = (),
                  trace_train: bool = True) -> list[PinnedRow]:
    """Layers whose output channels cannot be pruned, and why.

    Args:
        model: The model (as given to the pruner).
        example_inputs: Its example inputs.
        graph: The pruner's graph (for the space names of partly pinned
            layers); None: no space names.
        ignore_layers: As given to the pruner.
        leaf_modules: As given to the pruner.
        trace_train: As given to the pruner.

    Returns:
        One :class:`PinnedRow` per pinned layer with per-channel weights,
        in graph order.
    """
    rg = _ReasonGraph(model, example_inputs, ignore_layers=ignore_layers,
                      leaf_modules=leaf_modules, trace_train=trace_train)
    why = _explain(rg)
    u = rg.union
    rows = []
    for name, rec in rg.layers.items():
        slots = rec.out_slots
        if slots is None:
            continue
        if rec.kind == 'param' and not (name.endswith('weight') and
                                        slots.ndim >= 2):
            continue  # only weights used functionally (conv / linear)
        uniq = torch.unique(slots).tolist()
        roots = [u.find(v) for v in uniq]
        pinned = [(v, r) for v, r in zip(uniq, roots) if r in why]
        if not pinned:
            continue
        count = int(torch.isin(slots.reshape(-1), torch.tensor(
            [v for v, _ in pinned])).sum())
        space = None
        if graph is not None and name in graph.layers and \
                len(pinned) < len(uniq):
            cmap = graph.channel_map(name)
            space = cmap[0][0] if cmap else None
        # the most specific reason among this layer's pinned components
        cat, detail = min((why[r] for _, r in pinned),
                          key=lambda w: _RANK[w[0]])
        rows.append(PinnedRow(name, rec.kind, count, space,
                              f'{cat}: {detail}'))
    return rows


def format_report(rows: Sequence[PinnedRow], limit: int = 40) -> str:
    """A compact text table of ``rows`` (at most ``limit`` lines)."""
    if not rows:
        return 'pinned channels: none (every layer is prunable)'
    w = min(48, max(len(r.layer) for r in rows))
    lines = [f"{'layer':{w}s} {'kind':6s} {'pinned':>6s}  reason"]
    for r in rows[:limit]:
        lines.append(f'{r.layer[-w:]:{w}s} {r.kind:6s} {r.channels:6d}  '
                     f'{r.reason}')
    if len(rows) > limit:
        lines.append(f'... {len(rows) - limit} more pinned layers')
    return '\n'.join(lines)


def top_reasons(rows: Sequence[PinnedRow], k: int = 3) -> list[str]:
    """The ``k`` reasons pinning the most channels, as
    ``'<reason> (<n> layers, <c> channels)'``."""
    agg: dict[str, list[int]] = {}
    for r in rows:
        a = agg.setdefault(r.reason, [0, 0])
        a[0] += 1
        a[1] += r.channels
    best = sorted(agg.items(), key=lambda kv: -kv[1][1])[:k]
    return [f'{reason} ({n} layers, {c} channels)'
            for reason, (n, c) in best]


def check_prunable(pruner, achieved: float | None = None,
                   target: float | None = None, slack: float = 0.15,
                   what: str = 'MACs') -> None:
    """Raise when ``pruner`` cannot do what was asked of it.

    Args:
        pruner: A :class:`~mmrazor_ext.pruners.ChannelPruner`.
        achieved: Kept fraction reached (e.g. MACs after / before).
        target: Kept fraction asked for.
        slack: How far above ``target`` ``achieved`` may be.
        what: Name of the quantity in the message.

    Raises:
        PinnedChannelsError: No prunable space, or ``achieved >
            target + slack``; the message lists the top pinning reasons.
    """
    name = type(pruner.model).__name__
    if not pruner.channel_spaces:
        problem = f'model {name} has no prunable channel space'
    elif achieved is not None and target is not None and \
            achieved > target + slack:
        problem = (f'model {name}: pruning reached a kept {what} ratio of '
                   f'{achieved:.3f}, far from the target {target:.3f} (the '
                   'prunable channels cannot reach it)')
    else:
        return
    reasons = top_reasons(pruner.report(log=False))
    raise PinnedChannelsError(
        f'{problem}. Channels are pinned by: '
        + ('; '.join(reasons) if reasons else 'nothing (no layer kind '
           'has channels)')
        + '. See ChannelPruner.report(); register a rule for the op / '
        'module named, or lower the target.')
