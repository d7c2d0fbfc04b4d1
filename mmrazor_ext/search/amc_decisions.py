"""What an AMC episode decides: one :class:`Decision` per channel space.

:func:`make_decisions` turns Knight's layer list (``network:``) into
decisions. Its entries mean, by ``channels``:

* ``'input'`` (default, Knight-MC): a listed conv / linear layer has its
  **input** channels pruned, and the *directly preceding* producer (a BN,
  activation, pooling or flatten in between is fine) loses the matching
  filters (seeds/003, "KMC注意事项" 1). The channels must belong to that one
  producer and feed only the listed layer; pruning that would reach further
  (a residual add, a concat, a branch feeding other layers, a grouped conv
  tying its inputs to its outputs) is a ``ValueError`` naming the listed
  layer and every other layer it would change ("KMC注意事项" 2). Residual
  streams therefore cannot be listed.
* ``'output'`` (this project's addition): a listed layer has its **output**
  channels pruned with every consumer's inputs. A space with several
  producers (a residual group) is only accepted when *all* of them are
  listed, otherwise the ``ValueError`` names the missing ones; this is the
  way to search residual groups from a list.

Without a list every prunable space is a decision, in graph order.
:class:`NetworkList` carries the list and its meaning through callers that
only pass ``layers`` on.

Keep counts are multiples of ``group_size`` (:func:`allowed_counts`);
:func:`static_features` gives the per-decision part of AMC's state.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from torch import nn

__all__ = ['Decision', 'NETWORK_CHANNELS', 'NetworkList', 'STATE_NAMES',
           'allowed_counts', 'make_decisions', 'range_counts', 'snap',
           'static_features']

#: Meanings of a ``network:`` entry (see the module docstring).
NETWORK_CHANNELS = ('input', 'output')

#: AMC's per-decision state, in order: static entries (min-max normalised
#: over the decisions), then MACs removed so far, MACs of the later
#: decisions (fractions of the dense MACs) and the previous action.
STATE_NAMES = ('index', 'type', 'in_channels', 'out_channels', 'stride',
               'kernel', 'flops', 'reduced', 'rest', 'prev_action')


class NetworkList(list):
    """A ``network:`` layer list that knows what its entries mean.

    Args:
        names: Layer names, in decision order.
        channels: ``'input'`` (Knight: the listed layers' input channels,
            the preceding filters follow) or ``'output'`` (the listed
            layers' filters, the consumers' inputs follow).
    """

    def __init__(self, names: Iterable[str] = (), channels: str = 'input'):
        super().__init__(names)
        self.channels = check_channels(channels)


def check_channels(channels: str, where: str = 'network_channels') -> str:
    """Validate a ``network_channels`` value; returns it."""
    if channels not in NETWORK_CHANNELS:
        raise ValueError(f'{where}: must be one of '
                         f'{", ".join(NETWORK_CHANNELS)}, got {channels!r}')
    return channels


@dataclass
class Decision:
    """One step of an episode: a channel space and the layer describing it.

    Attributes:
        space: Channel space name.
        layer: The layer whose state describes the step: the listed layer
            (input mode: the consumer; output mode: the first listed
            producer) or, without a list, the space's first producer.
        num_channels: Units of the space.
        allowed: Allowed keep counts (ascending, multiples of group_size).
        stake: MACs that pruning the whole space would remove.
        role: ``'in'`` when ``layer``'s input channels are the pruned ones,
            ``'out'`` when its output channels are.
    """

    space: str
    layer: str
    num_channels: int
    allowed: list[int] = field(default_factory=list)
    stake: int = 0
    role: str = 'out'


def _producers(graph, space_name: str) -> list[str]:
    space = graph.spaces[space_name]
    return [n for n, role in space.members
            if role == 'out' and graph.layers[n].producer]


def _consumers(graph, space_name: str) -> list[str]:
    space = graph.spaces[space_name]
    return [n for n, role in space.members
            if role == 'in' and graph.layers[n].producer]


def _check_listed(graph, model: nn.Module, layers: list[str], where: str
                  ) -> None:
    module_names = {n for n, _ in model.named_modules()}
    seen = set()
    for name in layers:
        if name not in module_names:
            raise KeyError(f'{where}: layer {name!r} is not in the model')
        if name in seen:
            raise ValueError(f'{where}: layer {name!r} is listed twice')
        seen.add(name)
        rec = graph.layers.get(name)
        if rec is None or not rec.producer:
            raise ValueError(f'{where}: layer {name!r} is not a prunable '
                             'conv / linear layer of the traced graph')


# why a layer's input / output channels may map to no space
_UNPRUNABLE = {'in': ('input', 'come from the network input'),
               'out': ('output', 'reach the network output')}


def _prunable_channels(graph, name: str, role: str, where: str) -> list:
    """``graph.channel_map(name, role)``, which must not be empty."""
    touched = graph.channel_map(name, role)
    if not touched:
        side, why = _UNPRUNABLE[role]
        raise ValueError(f'{where}: the {side} channels of {name!r} cannot '
                         f'be pruned (they {why} or an ignored layer)')
    return touched


def _input_decisions(graph, layers: list[str], where: str
                     ) -> list[Decision]:
    decisions = []
    for name in layers:
        touched = _prunable_channels(graph, name, 'in', where)
        n_in = graph.layers[name].in_index.numel()
        spaces = [s for s, _, _ in touched]
        covered = sum(sel.numel() for _, sel, _ in touched)
        producers = [p for s in spaces for p in _producers(graph, s)]
        if len(spaces) > 1 or covered < n_in:
            raise ValueError(
                f'{where}: the input channels of {name!r} come from several '
                f'layers ({", ".join(producers)}'
                f'{" and unprunable ones" if covered < n_in else ""}, e.g. a '
                'concat); Knight prunes only the directly preceding layer '
                '(KMC note 2): remove it from the list')
        space = spaces[0]
        others = [c for c in _consumers(graph, space) if c != name]
        if len(producers) != 1 or others:
            # a producer that also reads the channels ties in = out
            tied = [p for p in producers if p in others or p == name]
            readers = [c for c in others if c not in tied]
            parts, why = [], []
            if len(producers) > 1:
                parts.append('the filters of ' + ', '.join(producers))
                if tied:
                    why.append(f'the grouped conv {", ".join(tied)} ties '
                               'its inputs to its outputs')
                if len(producers) - len(tied) > 1:
                    why.append('several layers produce them: a residual add')
            if readers:
                parts.append('the input channels of ' + ', '.join(readers))
                why.append('other layers read them too')
            raise ValueError(
                f'{where}: pruning the input channels of {name!r} would also '
                f'change {" and ".join(parts)} ({"; ".join(why)}); Knight '
                'prunes only the directly preceding layer (KMC note 2). '
                f'Remove {name!r} from the list (residual groups can be '
                'searched without a list or with an output-channel list, '
                'network_channels: output)')
        decisions.append(Decision(space, name,
                                  graph.spaces[space].num_channels,
                                  role='in'))
    return decisions


def _output_decisions(graph, layers: list[str], where: str
                      ) -> list[Decision]:
    order: dict[str, str] = {}
    for name in layers:
        touched = _prunable_channels(graph, name, 'out', where)
        for space, _, _ in touched:
            order.setdefault(space, name)
    listed = set(layers)
    for space in order:
        missing = [p for p in _producers(graph, space) if p not in listed]
        if missing:
            raise ValueError(
                f'{where}: pruning {order[space]!r} also changes {missing} '
                '(they share its output channels, e.g. a residual group); '
                'list all of them to prune the group together, or remove it '
                'from the list')
    return [Decision(space, layer, graph.spaces[space].num_channels)
            for space, layer in order.items()]


def make_decisions(graph, model: nn.Module, layers: Sequence[str] | None,
                   where: str = 'network', channels: str | None = None
                   ) -> list[Decision]:
    """Decisions of an episode, in order (rules in the module docstring).

    Args:
        graph: The pruner's channel graph.
        model: The traced model.
        layers: Ordered layer names, or None for every space.
        where: Prefix of error messages (the config field of the list).
        channels: ``'input'`` or ``'output'`` (see the module docstring);
            default: ``layers.channels`` of a :class:`NetworkList`, else
            ``'input'``.

    Raises:
        KeyError: A listed layer is not in the model.
        ValueError: A listed layer cannot be pruned, is listed twice, or
            its pruning would reach layers it does not name (the message
            names them).
    """
    spaces = graph.spaces
    if layers is None:
        return [Decision(name, name, sp.num_channels)
                for name, sp in spaces.items()]
    if channels is None:
        channels = getattr(layers, 'channels', 'input')
    check_channels(channels)
    layers = list(layers)
    if not layers:
        raise ValueError(f'{where}: the layer list is empty')
    _check_listed(graph, model, layers, where)
    if channels == 'input':
        return _input_decisions(graph, layers, where)
    return _output_decisions(graph, layers, where)


def allowed_counts(n: int, group_size: int) -> list[int]:
    """Keep counts of an ``n``-channel space: multiples of ``group_size``,
    plus ``n`` itself."""
    g = int(group_size)
    allowed = list(range(g, n + 1, g)) if n >= g else [n]
    if allowed[-1] != n:
        allowed.append(n)
    return allowed


def snap(d: Decision, x: float) -> int:
    """Nearest allowed count to ``x`` channels (ties: more kept)."""
    arr = np.asarray(d.allowed, dtype=np.float64)
    i = int(np.argmin(np.abs(arr - x) - 1e-9 * arr))
    return d.allowed[i]


def range_counts(d: Decision, action_range: Sequence[float]
                 ) -> tuple[int, int]:
    """Smallest / largest allowed count inside ``action_range``."""
    n = d.num_channels
    lo = min((k for k in d.allowed if k >= action_range[0] * n - 1e-9),
             default=d.allowed[-1])
    hi = max((k for k in d.allowed if k <= action_range[1] * n + 1e-9),
             default=d.allowed[0])
    return lo, max(lo, hi)


def static_features(model: nn.Module, decisions: Sequence[Decision]
                    ) -> np.ndarray:
    """(decisions, 7) static state entries, min-max normalised per column:
    index, type (conv 0, grouped conv 0.5, linear 1), input channels,
    output channels, stride, kernel size, MACs at stake. The pruned side
    (inputs for ``role='in'``, outputs for ``'out'``) is counted in units
    of the decision's space."""
    rows = []
    for t, d in enumerate(decisions):
        m = model.get_submodule(d.layer)
        if isinstance(m, nn.Linear):
            kind, cin, cout, stride, kernel = \
                1.0, m.in_features, m.out_features, 1, 1
        else:
            kind = 0.5 if getattr(m, 'groups', 1) > 1 else 0.0
            cin = getattr(m, 'in_channels', 0)
            cout = getattr(m, 'out_channels', 0)
            stride = max(getattr(m, 'stride', (1,)))
            kernel = int(np.prod(getattr(m, 'kernel_size', (1,))))
        if d.role == 'in':
            cin = d.num_channels
        else:
            cout = d.num_channels
        rows.append([t, kind, cin, cout, stride, kernel, d.stake])
    arr = np.asarray(rows, dtype=np.float64)
    lo, hi = arr.min(0), arr.max(0)
    span = np.where(hi > lo, hi - lo, 1.0)
    return ((arr - lo) / span).astype(np.float32)
