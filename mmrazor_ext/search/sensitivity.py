"""Sensitivity-aware allocation of a MACs target over channel spaces.

Raw metric scores are not comparable across layers (an L1 norm of a first
conv and of a last one live on different scales), so one global threshold
prunes where the numbers are small, not where pruning does no harm.
:class:`SensitivityAllocator` measures the harm instead: starting from the
full width (or a given subnet), it repeatedly removes one *chunk* of
channels (``step``: a fraction of the space, rounded to the pruner's
divisor) from the space whose chunk costs the least held-out loss per MAC
saved, until the MACs fall to the target; the last chunk is shrunk so the
result lands just at or below it. Inside a space the metric's scores
decide which channels go (lowest first), so the allocation decides *how
many* and the metric *which*.

Each candidate is scored by an adaptive-BN evaluation
(:class:`~mmrazor_ext.search.AdaptiveBNEvaluator`: BN statistics
re-estimated on ``bn_batches`` cached training batches, then cross-entropy
and top-1 on ``eval_batches`` cached held-out batches). Cost stays bounded:
the loss increase of a space's next chunk is measured once and reused until
that space changes (after each step only the chosen space is re-measured,
against the new state; ``refresh`` re-measures all every so many steps),
the MACs saved are recomputed exactly every step, and evaluations are
cached by state, so the whole run costs about ``#spaces + 2 * #steps``
evaluations. Every evaluation runs under a fixed torch seed, so runs are
deterministic.
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from mmengine.logging import print_log

from .evaluator import AdaptiveBNEvaluator

__all__ = ['SENSITIVITY_KEYS', 'SensitivityAllocator',
           'allocate_by_sensitivity', 'check_sensitivity']

#: keys of ``sensitivity=dict(...)`` with their defaults
SENSITIVITY_KEYS = {'step': 0.125, 'bn_batches': 5, 'eval_batches': 5,
                    'refresh': 0, 'objective': 'loss', 'tol': 0.01,
                    'seed': 0, 'progress': True}


def check_sensitivity(cfg: Mapping | None, where: str = 'sensitivity'
                      ) -> dict:
    """``cfg`` completed with :data:`SENSITIVITY_KEYS` defaults, checked.

    Raises:
        ValueError: Naming the bad field (``sensitivity.step`` ...).
    """
    if cfg is not None and not isinstance(cfg, Mapping):
        raise ValueError(f'{where}: expected a dict, got {type(cfg).__name__}')
    cfg = {**SENSITIVITY_KEYS, **(cfg or {})}
    unknown = set(cfg) - set(SENSITIVITY_KEYS)
    if unknown:
        raise ValueError(f'{where}: unknown keys {sorted(unknown)} (known: '
                         f'{list(SENSITIVITY_KEYS)})')
    step = cfg['step']
    if isinstance(step, bool) or not isinstance(step, (int, float)) or \
            step <= 0 or (step >= 1 and float(step) != int(step)):
        raise ValueError(f'{where}.step must be a fraction in (0, 1) of a '
                         f'space or a channel count >= 1, got {step!r}')
    for key, low in (('bn_batches', 0), ('eval_batches', 1), ('refresh', 0),
                     ('seed', 0)):
        v = cfg[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f'{where}.{key} must be an int >= {low}, got '
                             f'{v!r}')
    if cfg['objective'] not in ('loss', 'top1'):
        raise ValueError(f"{where}.objective must be 'loss' or 'top1', got "
                         f"{cfg['objective']!r}")
    tol = cfg['tol']
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or \
            not 0 <= tol < 1:
        raise ValueError(f'{where}.tol must be in [0, 1), got {tol!r}')
    if not isinstance(cfg['progress'], bool):
        raise ValueError(f"{where}.progress must be a bool, got "
                         f"{cfg['progress']!r}")
    return cfg


class _LossRecorder:
    """A ``forward`` for the evaluator that keeps the eval-mode logits
    (BN recalibration runs in train mode and is not recorded)."""

    def __init__(self, forward=None):
        self.forward = forward
        self.logits: list[torch.Tensor] = []

    def __call__(self, model, inputs):
        if self.forward is not None:
            out = self.forward(model, inputs)
        elif hasattr(model, 'data_preprocessor'):
            out = model(inputs, mode='tensor')
        else:
            out = model(inputs)
        if not model.training:
            logits = out[-1] if isinstance(out, (tuple, list)) else out
            self.logits.append(logits.detach().float())
        return out


class SensitivityAllocator:
    """Greedy allocation of a MACs target by measured damage.

    Args:
        pruner: The :class:`~mmrazor_ext.pruners.ChannelPruner`.
        evaluator: An :class:`AdaptiveBNEvaluator` of ``pruner`` whose
            ``forward`` is the :meth:`recorder` (see
            :func:`allocate_by_sensitivity`), or any object with
            ``evaluate(subnet) -> {'loss' or 'top1': ...}``.
        scores: ``{space: channel scores}`` (higher = kept longer).
        step: Channels per chunk: a fraction of the space (rounded up to
            the divisor) or a count.
        start: Subnet to start from (its pruned channels stay pruned);
            None: the full width.
        objective: ``'loss'`` (held-out cross-entropy) or ``'top1'``.
        refresh: Re-measure every space's next chunk every ``refresh``
            steps (0: only the space that changed).
        seed: Torch seed of every evaluation.
        progress: Show a tqdm bar.
    """

    def __init__(self, pruner, evaluator, scores: Mapping | None = None,
                 step: float = 0.125, start: Mapping | None = None,
                 objective: str = 'loss', refresh: int = 0, seed: int = 0,
                 progress: bool = True):
        self.pruner = pruner
        self.evaluator = evaluator
        self.sampler = pruner.sampler
        self.spaces = pruner.channel_spaces
        scores = self.sampler.scores(scores)
        start = dict(start) if start else None
        self.order, self.kept = {}, {}
        for name, space in self.spaces.items():
            s = scores[name].clone()
            if start is not None and name in start:
                mask = torch.as_tensor(start[name]).reshape(-1).bool()
                s[~mask] = -math.inf   # already pruned: first to go
                self.kept[name] = int(mask.sum())
            else:
                self.kept[name] = space.num_channels
            self.order[name] = torch.argsort(-s, stable=True)
        self.step = step
        self.objective = objective
        self.refresh = int(refresh)
        self.seed = int(seed)
        self.progress = progress
        self.total = pruner.original_flops
        self._cache: dict[tuple, dict] = {}
        self.num_evaluations = 0
        self.trajectory: list[dict] = []

    # -- widths -----------------------------------------------------------------
    def _granule(self, name: str) -> int:
        return self.sampler.granule(name)

    def _chunk(self, name: str) -> int:
        n, g = self.spaces[name].num_channels, self._granule(name)
        raw = self.step * n if self.step < 1 else self.step
        return max(g, int(math.ceil(round(raw, 6) / g)) * g)

    def _next(self, name: str, kept: int, amount: int | None = None
              ) -> int | None:
        """Kept count after removing one chunk (None: at the floor)."""
        g = self._granule(name)
        new = kept - (self._chunk(name) if amount is None else amount)
        if g > 1:
            new = (new // g) * g
        new = max(new, self.sampler.round_keep(self.spaces[name], 0))
        return new if new < kept else None

    def subnet(self, kept: Mapping[str, int]) -> dict[str, torch.Tensor]:
        """Keep masks: the ``kept[space]`` best channels by the scores."""
        res = {}
        for name, space in self.spaces.items():
            mask = torch.zeros(space.num_channels, dtype=torch.bool)
            mask[self.order[name][:kept[name]]] = True
            res[name] = mask
        return res

    def macs(self, kept: Mapping[str, int]) -> int:
        return self.pruner.estimate_flops(self.subnet(kept))

    # -- evaluation -------------------------------------------------------------
    def damage(self, kept: Mapping[str, int]) -> float:
        """Held-out loss (or ``-top1``) of a state (cached)."""
        key = tuple(kept[n] for n in self.spaces)
        if key not in self._cache:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                self._cache[key] = dict(self.evaluator.evaluate(
                    self.subnet(kept)))
            self.num_evaluations += 1
        res = self._cache[key]
        if self.objective == 'top1':
            return -float(res['top1'])
        if 'loss' not in res:
            raise KeyError("sensitivity: the evaluator gave no 'loss' (use "
                           "allocate_by_sensitivity or objective='top1')")
        return float(res['loss'])

    def run(self, flops_ratio: float, tol: float = 0.01
            ) -> tuple[dict[str, torch.Tensor], dict]:
        """Allocate until at most ``flops_ratio`` of the MACs remain.

        Args:
            flops_ratio: Target MACs keep ratio in (0, 1).
            tol: The result is within ``[(1 - tol) * target, target]`` of
                the MACs fraction when the channel granularity allows.

        Returns:
            ``(subnet, report)``; the report has ``flops_ratio``,
            ``keep_ratios``, ``damage_before`` / ``damage_after``,
            ``evaluations``, ``steps``, ``seconds`` and ``trajectory``.
        """
        if isinstance(flops_ratio, bool) or not 0 < flops_ratio < 1:
            raise ValueError(f'target.ratio must be in (0, 1), got '
                             f'{flops_ratio!r}')
        t0 = time.perf_counter()
        goal = flops_ratio * self.total
        kept = dict(self.kept)
        macs = self.macs(kept)
        start_damage = cur = self.damage(kept)
        cand: dict[str, float] = {}   # space -> loss increase of its chunk
        bar = None
        if self.progress:
            from tqdm import tqdm
            bar = tqdm(total=100, desc='sensitivity', unit='%',
                       leave=False)
        first = macs
        span = max(first - goal, 1)
        steps = 0
        try:
            while macs > goal:
                if self.refresh and steps and steps % self.refresh == 0:
                    cand.clear()
                options = {}
                for name in self.spaces:
                    new = self._next(name, kept[name])
                    if new is None:
                        continue
                    state = dict(kept, **{name: new})
                    saved = macs - self.macs(state)
                    if saved <= 0:
                        continue
                    if name not in cand:  # measured once per space state
                        cand[name] = self.damage(state) - cur
                    options[name] = (cand[name] / saved, state, saved)
                if not options:
                    print_log(f'sensitivity: every space is at its minimum; '
                              f'MACs fraction {macs / self.total:.4f} > '
                              f'target {flops_ratio}', logger='current',
                              level=30)
                    break
                name = min(options, key=lambda n: (options[n][0], n))
                rate, state, saved = options[name]
                del cand[name]
                if macs - saved < goal * (1 - tol):
                    state = self._finish(name, kept, goal)
                new_macs = self.macs(state)
                kept, cur = state, self.damage(state)
                steps += 1
                self.trajectory.append({
                    'space': name, 'kept': kept[name],
                    'flops_ratio': new_macs / self.total, 'damage': cur,
                    'rate_per_gmac': rate * 1e9})
                if bar is not None:
                    pct = min(100.0, round(
                        100 * (first - new_macs) / span, 2))
                    bar.update(max(0.0, pct - bar.n))
                macs = new_macs
        finally:
            if bar is not None:
                bar.close()
        subnet = self.subnet(kept)
        report = {
            'flops_ratio': macs / self.total, 'target_ratio': flops_ratio,
            'objective': self.objective, 'damage_before': start_damage,
            'damage_after': cur, 'evaluations': self.num_evaluations,
            'steps': steps, 'seconds': time.perf_counter() - t0,
            'keep_ratios': {n: kept[n] / s.num_channels
                            for n, s in self.spaces.items()},
            'trajectory': self.trajectory}
        print_log(f'sensitivity allocation: MACs fraction '
                  f'{report["flops_ratio"]:.4f} (target {flops_ratio}) in '
                  f'{steps} steps, {self.num_evaluations} evaluations, '
                  f'{report["seconds"]:.1f} s; {self.objective} '
                  f'{start_damage:.4g} -> {cur:.4g}', logger='current')
        return subnet, report

    def _finish(self, name: str, kept: dict, goal: float) -> dict:
        """The smallest removal from ``name`` that reaches ``goal``."""
        g = self._granule(name)
        full = self._next(name, kept[name])
        for amount in range(g, kept[name] - full + 1, g):
            new = self._next(name, kept[name], amount)
            if new is None:
                continue
            state = dict(kept, **{name: new})
            if self.macs(state) <= goal:
                return state
        return dict(kept, **{name: full})


def allocate_by_sensitivity(pruner, scores: Mapping | None,
                            flops_ratio: float, batches: Iterable,
                            start: Mapping | None = None,
                            forward=None, **cfg
                            ) -> tuple[dict[str, torch.Tensor], dict]:
    """Sensitivity-aware subnet for a MACs target (see the module doc).

    Args:
        pruner: The :class:`~mmrazor_ext.pruners.ChannelPruner`.
        scores: ``{space: channel scores}`` of the metric.
        flops_ratio: Target MACs keep ratio in (0, 1).
        batches: Training batches (mmengine dicts or ``(inputs, labels)``):
            the first ``bn_batches`` recalibrate BN, the next
            ``eval_batches`` are the held-out set.
        start: Subnet to continue from (iterative pruning).
        forward: ``forward(model, inputs) -> logits`` (default: mmengine
            ``mode='tensor'`` or a plain call).
        **cfg: :data:`SENSITIVITY_KEYS` (``step``, ``bn_batches``,
            ``eval_batches``, ``refresh``, ``objective``, ``tol``, ``seed``,
            ``progress``).

    Returns:
        ``(subnet, report)`` of :meth:`SensitivityAllocator.run`.

    Raises:
        ValueError: A bad ``cfg`` field, or too few batches.
    """
    cfg = check_sensitivity(cfg)
    data = []
    for batch in batches:
        if len(data) == cfg['bn_batches'] + cfg['eval_batches']:
            break
        data.append(batch)
    if len(data) < cfg['bn_batches'] + 1:
        raise ValueError(f"sensitivity: need bn_batches + eval_batches = "
                         f"{cfg['bn_batches'] + cfg['eval_batches']} training "
                         f'batches, got {len(data)}')
    recorder = _LossRecorder(forward)
    evaluator = AdaptiveBNEvaluator(
        pruner, data[:cfg['bn_batches']], data[cfg['bn_batches']:],
        bn_batches=cfg['bn_batches'], forward=recorder)
    labels = torch.cat([y.reshape(-1) for _, y in evaluator.val_cache])

    class _WithLoss:
        @staticmethod
        def evaluate(subnet):
            recorder.logits.clear()
            res = evaluator.evaluate(subnet)
            logits = torch.cat(recorder.logits[-len(evaluator.val_cache):])
            res['loss'] = float(F.cross_entropy(logits,
                                                labels.to(logits.device)))
            return res

    alloc = SensitivityAllocator(
        pruner, _WithLoss(), scores, step=cfg['step'], start=start,
        objective=cfg['objective'], refresh=cfg['refresh'], seed=cfg['seed'],
        progress=cfg['progress'])
    subnet, report = alloc.run(flops_ratio, cfg['tol'])
    report['config'] = {k: v for k, v in cfg.items() if k != 'progress'}
    return subnet, report
