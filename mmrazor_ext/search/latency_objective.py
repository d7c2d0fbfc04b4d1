"""The latency table as an objective or budget of fusion, search and AMC.

:class:`LatencyObjective` is a thin view of a
:class:`~mmrazor_ext.pruners.ChannelPruner`'s latency API
(:meth:`~mmrazor_ext.pruners.ChannelPruner.estimate_latency`, backed by the
per-layer table of :mod:`mmrazor_ext.pruners.latency_target`): a validated
``dict(mode='latency', ratio=... | ms=..., batch, grid, repeats, cache_dir,
num_threads, clock)`` -- the keys of the channel-pruning latency target --
turned into a budget (fraction of the dense model's latency), estimates of
subnets and a fingerprint of the table. There is no second table or
estimator: every number here is ``pruner.estimate_latency``.

Block removal (layer fusion) is expressed as a subnet too: removing a
residual branch drops every layer of it, which is what emptying the
channel spaces that live only inside the branch does to the table sum
(:func:`block_removal_subnet`). The branch's output add and activation
stay counted, so a removal is never credited with more than it saves.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping

import torch

from mmrazor_ext.pruners.latency_target import (
    LATENCY_TARGET_KEYS,
    check_latency_target,
)

__all__ = ['LatencyObjective', 'TABLE_KEYS', 'block_latency_savings',
           'block_removal_subnet', 'check_latency_config']

#: keys of a latency target that choose the table (LatencyModel options)
TABLE_KEYS = ('batch', 'grid', 'repeats', 'cache_dir', 'num_threads',
              'clock')


def check_latency_config(cfg: Mapping, where: str = 'target',
                         budget: bool = True,
                         extra_keys: Iterable[str] = ()) -> dict:
    """A validated copy of ``dict(mode='latency', ...)`` whose errors name
    ``where`` (``target``, ``constraint`` ...).

    Args:
        cfg: The config dict.
        where: Config field for the messages.
        budget: Whether ``ratio`` or ``ms`` is required (False: only the
            table options, e.g. for a latency objective without a bound).
        extra_keys: Keys of channel pruning's latency target, besides
            ``mode``, ``ratio``, ``ms`` and :data:`TABLE_KEYS`, that this
            user reads; the others (``sampling``, ``tol``, calibration
            ...) are an error here instead of a silent no-op.

    Raises:
        ValueError: Naming the bad field (``<where>.ratio`` ...).
    """
    if not isinstance(cfg, Mapping):
        raise ValueError(f"{where}: expected a dict such as dict(mode="
                         f"'latency', ratio=0.5), got {cfg!r}")
    cfg = dict(cfg)
    if cfg.get('mode', 'latency') != 'latency':
        raise ValueError(f"{where}.mode must be 'latency', got "
                         f"{cfg['mode']!r}")
    cfg['mode'] = 'latency'
    used = {'mode', 'ratio', 'ms', *TABLE_KEYS, *extra_keys}
    for key in LATENCY_TARGET_KEYS:
        if key in cfg and key not in used:
            raise ValueError(f'{where}.{key}: not used here (known here: '
                             f'{sorted(used)})')
    placeholder = not budget and 'ratio' not in cfg and 'ms' not in cfg
    try:
        checked = check_latency_target(
            dict(cfg, ratio=0.5) if placeholder else cfg)
    except ValueError as e:
        msg = str(e).replace('target.', f'{where}.')
        raise ValueError(msg.replace('target:', f'{where}:', 1)) from None
    if placeholder:
        checked.pop('ratio')
    # only what was given: defaults belong to the pruning target
    return {k: v for k, v in checked.items() if k in cfg or k == 'mode'}


class LatencyObjective:
    """Estimated latency of a pruner's subnets, and a budget.

    Args:
        pruner: The :class:`~mmrazor_ext.pruners.ChannelPruner`.
        cfg: Checked by :func:`check_latency_config` (any extra keys
            must have been allowed by the caller's own check).
        where: Config field for the messages.
        budget: Whether ``cfg`` must give ``ratio`` or ``ms``.
        progress: tqdm bar while the table is measured.
    """

    def __init__(self, pruner, cfg: Mapping, where: str = 'target',
                 budget: bool = True, progress: bool = True):
        self.pruner = pruner
        self.where = where
        self.cfg = check_latency_config(
            cfg, where, budget, extra_keys=set(cfg) - {'mode'})
        self.options = {k: self.cfg[k] for k in TABLE_KEYS if k in self.cfg}
        self.progress = bool(progress)

    # -- the pruner's latency API ----------------------------------------------
    def model(self):
        """The pruner's :class:`~mmrazor_ext.pruners.latency_target.
        LatencyModel` for these options (measured or loaded once)."""
        return self.pruner.latency_model(progress=self.progress,
                                         **self.options)

    def estimate(self, subnet: Mapping[str, torch.Tensor] | None) -> float:
        """Estimated seconds per batch of the model exported for
        ``subnet`` (:meth:`ChannelPruner.estimate_latency`)."""
        return float(self.pruner.estimate_latency(
            subnet, progress=self.progress, **self.options))

    @property
    def dense_s(self) -> float:
        """Measured seconds per batch of the dense model."""
        return float(self.model().dense_s)

    def ratio(self, subnet: Mapping[str, torch.Tensor] | None) -> float:
        """Estimated latency of ``subnet`` as a fraction of the dense one."""
        return self.estimate(subnet) / self.dense_s

    @property
    def has_budget(self) -> bool:
        return 'ratio' in self.cfg or 'ms' in self.cfg

    @property
    def budget_ratio(self) -> float:
        """The budget as a fraction of the dense latency (``ms`` is divided
        by the measured dense latency; may be >= 1)."""
        if 'ratio' in self.cfg:
            return float(self.cfg['ratio'])
        if 'ms' not in self.cfg:
            raise ValueError(f'{self.where}: no ratio or ms given (no '
                             'latency budget)')
        return float(self.cfg['ms']) / 1e3 / self.dense_s

    def fingerprint(self) -> str:
        """Digest of the table (its cache key, the dense time and every
        entry): equal fingerprints give equal estimates."""
        table = self.model().table
        blob = json.dumps({'key': table.key, 'model_s': table.model_s,
                           'entries': table.entries}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()

    def summary(self, subnet: Mapping[str, torch.Tensor] | None = None
                ) -> dict:
        """JSON-friendly record of the budget and an estimate."""
        table = self.model().table
        est = self.estimate(subnet)
        res = {'mode': 'latency', **{k: self.cfg[k] for k in ('ratio', 'ms')
                                     if k in self.cfg},
               'options': dict(self.options), 'dense_ms': self.dense_s * 1e3,
               'estimated_ms': est * 1e3,
               'estimated_ratio': est / self.dense_s,
               'table': table.path, 'table_from_cache': table.from_cache}
        if self.has_budget:
            res['budget_ratio'] = self.budget_ratio
            res['budget_ms'] = self.budget_ratio * self.dense_s * 1e3
        return res


def _internal_spaces(graph, members: set[str]) -> list[str]:
    """Spaces whose every member layer is in ``members``."""
    return [name for name, sp in graph.spaces.items()
            if sp.members and all(layer in members
                                  for layer, _ in sp.members)]


def block_removal_subnet(pruner, blocks, names: Iterable[str],
                         removal_mode: str = 'identity'
                         ) -> dict[str, torch.Tensor]:
    """The subnet whose table estimate is the model without the residual
    branches of ``names``: every channel space that lives only inside a
    removed branch is emptied, so each of the branch's conv / linear layers
    is looked up at zero width.

    Args:
        pruner: :class:`~mmrazor_ext.pruners.ChannelPruner` of the model
            ``blocks`` was found on.
        blocks: Its :class:`~mmrazor_ext.graph.BlockAnalysis`.
        names: Blocks to remove.
        removal_mode: ``'identity'`` or ``'keep_shortcut'`` (the shortcut
            modules stay either way; an identity shortcut has none).

    Raises:
        ValueError: A timed layer of a removed branch has no channel space
            inside the branch (the table could not drop it); names the
            block and the layer.
    """
    graph = pruner.graph
    subnet: dict[str, torch.Tensor] = {}
    for name in names:
        info = blocks.blocks[name]
        keep = set(info.shortcut_modules)
        branch = {m for m in info.branch_modules if m not in keep}
        inside = set(_internal_spaces(graph, branch))
        for layer in sorted(branch):
            rec = graph.layers.get(layer)
            if rec is None or rec.kind not in ('conv', 'linear'):
                continue
            spaces = {s for role in ('in', 'out')
                      for s, _, _ in graph.channel_map(layer, role)}
            if not spaces & inside:
                raise ValueError(
                    f'latency target: block {name!r} ({removal_mode}): layer '
                    f'{layer!r} has no channel space inside the block, so the '
                    'latency table cannot drop it; use a FLOPs target for '
                    'this model')
        for s in inside:
            subnet[s] = torch.zeros(graph.spaces[s].num_channels,
                                    dtype=torch.bool)
    return subnet


def block_latency_savings(objective: LatencyObjective, blocks,
                          names: Iterable[str],
                          removal_mode: str = 'identity'
                          ) -> tuple[dict[str, float], float, dict]:
    """What removing each block alone saves, by the latency table.

    Savings add up: removed branches share no layer, and the estimate is a
    sum over layers (plus element-wise work scaled by kept activations).

    Args:
        objective: A :class:`LatencyObjective` with a budget, on a pruner
            of the model ``blocks`` was found on.
        blocks: The :class:`~mmrazor_ext.graph.BlockAnalysis`.
        names: Candidate blocks.
        removal_mode: See :func:`block_removal_subnet`.

    Returns:
        ``({block: seconds saved}, estimated dense seconds, plan target)``,
        the target ``dict(mode='latency', ratio=r)`` relative to the
        estimated dense seconds (the budget is relative to the measured
        dense latency, which the estimate can exceed).
    """
    dense = objective.estimate({})
    saved = {n: dense - objective.estimate(block_removal_subnet(
        objective.pruner, blocks, [n], removal_mode)) for n in names}
    ratio = objective.budget_ratio * objective.dense_s / dense
    return saved, dense, dict(mode='latency', ratio=ratio)
