"""AutoSlim's greedy slimming (Yu & Huang, 2019) over a pruner's spaces.

Starting from the full width, shrink by ``step`` the channel space whose
shrink costs the least held-out accuracy (each candidate scored by an
evaluator such as :class:`~mmrazor_ext.search.AdaptiveBNEvaluator`), until
the FLOPs fall to each target; the step that crosses a target is refined
channel group by channel group so that the subnet lands within
``tolerance`` (2 %) below it. Widths keep the *first* channels of a space
(the slimmable convention of :class:`~mmrazor_ext.algorithms.AutoSlim`).

One subnet JSON per target (:meth:`ChannelPruner.save_subnet` format), the
trajectory ``autoslim_search.json`` (rewritten after every greedy step; a
restarted search resumes from it) and a PNG curve go to the work dir.
"""
from __future__ import annotations

import json
import math
import os.path as osp
import time
from collections.abc import Mapping, Sequence

import torch
from mmengine.dist import is_main_process
from mmengine.logging import print_log

from mmrazor_ext.pruners import ChannelPruner
from mmrazor_ext.utils.evaluation import recalibrate_bn
from mmrazor_ext.utils.io import atomic_write_json
from mmrazor_ext.visualization.trajectory import plot_trajectory

from .evaluator import preserve_subnet
from .space import renamed_kwarg

__all__ = ['GreedySlimmer', 'TRAJECTORY', 'check_flops_targets',
           'greedy_slim']

TRAJECTORY = 'autoslim_search.json'
_FORMAT = 'mmrazor_ext.autoslim_search'


def _front_mask(n: int, keep: int) -> torch.Tensor:
    mask = torch.zeros(n, dtype=torch.bool)
    mask[:keep] = True
    return mask


def check_flops_targets(targets: Sequence[float] | float) -> list[float]:
    """FLOPs fractions to reach, each in (0, 1), highest first.

    Raises:
        ValueError: naming ``target_flops_ratios``.
    """
    if isinstance(targets, (int, float)):
        targets = [targets]
    res = []
    for t in targets:
        if isinstance(t, bool) or not isinstance(t, (int, float)) or \
                not 0 < t < 1:
            raise ValueError(f'target_flops_ratios entries must be in (0, 1),'
                             f' got {t!r}')
        res.append(float(t))
    if not res:
        raise ValueError('target_flops_ratios is empty')
    return sorted(set(res), reverse=True)


class GreedySlimmer:
    """AutoSlim's greedy slimming over the channel spaces of a pruner.

    Args:
        pruner: :class:`ChannelPruner` of the (slimmable) model.
        evaluator: Object with ``evaluate(subnet) -> {'top1': ...}``, e.g.
            :class:`~mmrazor_ext.search.AdaptiveBNEvaluator` on held-out
            batches. It must restore the model afterwards.
        target_flops_ratios: FLOPs fractions of the full width to reach
            (one subnet each), e.g. ``[0.5, 0.35]``.
        step: Channels removed per greedy step: an int (channels) or a
            float in (0, 1) (fraction of the space's channels); rounded to
            the pruner's divisor, at least one channel group.
        min_keep_ratio: Smallest kept fraction of a space (use the
            supernet's training ``min_keep_ratio``: narrower widths were
            never trained). None: down to the pruner's ``min_channels``.
        tolerance: A target is hit when ``(1 - tolerance) * t <= FLOPs
            fraction <= t``.
        work_dir: Where the trajectory, subnet JSONs and the PNG go (None:
            nothing is written and there is no resume).
        resume: Continue from ``work_dir/autoslim_search.json`` if present.
        save_weights: Also save each subnet's sliced weights (``.pth``
            next to its JSON) after recalibrating its BN statistics on the
            evaluator's cached training batches.
        max_steps: Stop after this many greedy steps in this call (budget,
            or a kill simulation); rerunning continues.
        prefix: File name prefix of the subnet JSONs.
        min_ratio: Deprecated name of ``min_keep_ratio``.
    """

    def __init__(self, pruner: ChannelPruner, evaluator,
                 target_flops_ratios: Sequence[float] | float = (0.5,),
                 step: int | float = 0.1,
                 min_keep_ratio: float | None = None,
                 tolerance: float = 0.02, work_dir: str | None = None,
                 resume: bool = True, save_weights: bool = False,
                 max_steps: int | None = None, prefix: str = 'subnet_flops',
                 min_ratio: float | None = None):
        self.pruner = pruner
        self.evaluator = evaluator
        self.targets = check_flops_targets(target_flops_ratios)
        if isinstance(step, bool) or not isinstance(step, (int, float)) or \
                step <= 0 or (step >= 1 and float(step) != int(step)):
            raise ValueError(f'step must be a channel count >= 1 or a '
                             f'fraction in (0, 1), got {step!r}')
        self.step = int(step) if step >= 1 else float(step)
        keep = renamed_kwarg(min_keep_ratio, min_ratio, 'min_keep_ratio',
                             'min_ratio', 'GreedySlimmer')
        if keep is not None and not 0 < keep <= 1:
            raise ValueError(f'min_keep_ratio must be in (0, 1], got '
                             f'{keep!r}')
        self.min_keep_ratio = None if keep is None else float(keep)
        if not 0 < tolerance < 1:
            raise ValueError(f'tolerance must be in (0, 1), got '
                             f'{tolerance!r}')
        self.tolerance = float(tolerance)
        self.work_dir = work_dir
        self.resume = resume
        self.save_weights = save_weights
        self.max_steps = max_steps
        self.prefix = prefix
        self.spaces = {n: s.num_channels
                       for n, s in pruner.channel_spaces.items()}
        self.original_flops = pruner.original_flops
        self._floor = self._floors()
        # A resumed search must be the same search on the same weights.
        with torch.no_grad():
            digest = sum(float(p.double().sum())
                         for p in pruner.model.parameters())
        self._weights_sum = float(f'{digest:.10g}')
        self.trajectory: list[dict] = []
        self.results: dict[str, dict] = {}
        self.num_evaluations = 0

    # -- widths ------------------------------------------------------------------------
    def _granule(self, name: str) -> int:
        # the pruner's per-space divisor (``divisor='auto'`` differs by
        # space width), in units
        return self.pruner.sampler.granule(name)

    def _floors(self) -> dict[str, int]:
        # The pruner's own rounding (divisor, min_channels): with
        # min_keep_ratio this is exactly the supernet's smallest trained
        # width. The pruner's ratios are removed fractions.
        keep = 0.0 if self.min_keep_ratio is None else self.min_keep_ratio
        sub = self.pruner.sample_subnet_nonuni(
            {n: min(1.0 - keep, 0.999999) for n in self.spaces}, None)
        return {n: int(m.sum()) for n, m in sub.items()}

    def _amount(self, name: str) -> int:
        n, g = self.spaces[name], self._granule(name)
        raw = self.step if isinstance(self.step, int) else self.step * n
        return max(g, int(math.ceil(round(raw, 6) / g)) * g)

    def _shrink(self, name: str, keep: int, amount: int) -> int | None:
        g = self._granule(name)
        new = keep - amount
        if g > 1:
            new = (new // g) * g
        new = max(new, self._floor[name])
        return new if new < keep else None

    def subnet(self, kept: Mapping[str, int]) -> dict[str, torch.Tensor]:
        """Front-channel masks of ``{space: kept count}``."""
        return {n: _front_mask(self.spaces[n], int(kept[n]))
                for n in self.spaces}

    def flops_ratio(self, kept: Mapping[str, int]) -> float:
        return self.pruner.estimate_flops(self.subnet(kept)) / \
            self.original_flops

    def _evaluate(self, kept) -> dict:
        self.num_evaluations += 1
        subnet = self.subnet(kept)
        res = dict(self.evaluator.evaluate(subnet))
        if 'top1' not in res:
            raise KeyError('greedy_slim: the evaluator result has no "top1"')
        if 'flops' not in res:
            res['flops'] = self.pruner.estimate_flops(subnet)
        return res

    # -- persistence -------------------------------------------------------------------
    def _config(self) -> dict:
        return {'target_flops_ratios': self.targets, 'step': self.step,
                # 'min_ratio': the key older trajectories were written with
                'min_ratio': self.min_keep_ratio, 'tolerance': self.tolerance,
                'spaces': self.spaces, 'original_flops': self.original_flops,
                'weights_sum': self._weights_sum}

    def _path(self, name: str) -> str | None:
        return None if self.work_dir is None else osp.join(self.work_dir,
                                                           name)

    def _write(self, done: bool = False) -> None:
        path = self._path(TRAJECTORY)
        if path is None or not is_main_process():
            return
        data = {'format': _FORMAT, 'version': 1, 'config': self._config(),
                'trajectory': self.trajectory, 'targets': self.results,
                'num_evaluations': self.num_evaluations, 'done': done}
        atomic_write_json(path, data)

    def _load(self) -> bool:
        path = self._path(TRAJECTORY)
        if path is None or not self.resume or not osp.isfile(path):
            return False
        with open(path) as f:
            data = json.load(f)
        if data.get('format') != _FORMAT:
            raise ValueError(f'{path} is not an AutoSlim search trajectory')
        mine = json.loads(json.dumps(self._config()))
        for key, value in mine.items():
            if data['config'].get(key) != value:
                raise ValueError(
                    f'{path} was written by a different search ({key}: '
                    f'{data["config"].get(key)!r} there, {value!r} now); '
                    'delete it or use another work_dir')
        self.trajectory = data['trajectory']
        self.results = data.get('targets', {})
        self.num_evaluations = int(data.get('num_evaluations', 0))
        print_log(f'autoslim search: resumed from {path} after '
                  f'{self.trajectory[-1]["iter"]} greedy steps, '
                  f'{len(self.results)}/{len(self.targets)} targets done',
                  logger='current')
        return True

    def _save_target(self, t: float, kept: Mapping[str, int], res: dict,
                     it: int) -> dict:
        # named as the hybrid search names its subnets (subnet_flops0.50)
        tag = f'{t:.2f}' if round(t, 2) == t else f'{t:g}'
        name = f'{self.prefix}{tag}.json'
        entry = {'target': t, 'flops': int(res['flops']),
                 'flops_ratio': res['flops'] / self.original_flops,
                 'params': res.get('params'), 'top1': float(res['top1']),
                 'iter': it, 'kept': dict(kept), 'subnet_path': None}
        path = self._path(name)
        if path is not None and is_main_process():
            pruner = self.pruner
            with preserve_subnet(pruner):
                pruner.set_subnet(self.subnet(kept))
                cache = getattr(self.evaluator, 'bn_cache', None)
                if self.save_weights and cache:
                    recalibrate_bn(pruner.model, cache, len(cache),
                                   forward=getattr(self.evaluator, 'forward',
                                                   None))
                pruner.save_subnet(path, weights=self.save_weights)
            entry['subnet_path'] = name
        self.results[repr(t)] = entry
        print_log(f'autoslim search: target {t:g} reached at FLOPs ratio '
                  f'{entry["flops_ratio"]:.4f}, top-1 {entry["top1"]:.2f} '
                  f'(subnet {path or "not saved"})', logger='current')
        return entry

    # -- the search --------------------------------------------------------------------
    def _fine_adjust(self, prev: dict, ranking: Sequence[str], t: float
                     ) -> dict:
        """From ``prev`` (above ``t``) remove one channel group at a time,
        best-ranked space first, until the FLOPs are at most ``t``; a group
        that would fall below ``(1 - tolerance) t`` is taken from the next
        space in the ranking instead."""
        kept = dict(prev)
        low = t * (1 - self.tolerance)
        while self.flops_ratio(kept) > t:
            options = []
            choice = None
            for name in ranking:
                k2 = self._shrink(name, kept[name], self._granule(name))
                if k2 is None:
                    continue
                f2 = self.flops_ratio({**kept, name: k2})
                options.append((f2, name, k2))
                if f2 >= low:
                    choice = (f2, name, k2)
                    break
            if not options:
                break  # everything at its floor (the caller reports it)
            if choice is None:  # every group overshoots: the closest one
                choice = max(options)
            kept[choice[1]] = choice[2]
        return kept

    def run(self) -> list[dict]:
        """Run (or resume) the search.

        Returns:
            One dict per reached target, highest first: ``target``,
            ``flops``, ``flops_ratio``, ``params``, ``top1``, ``kept``
            (``{space: channels}``), ``subnet`` (masks), ``subnet_path``
            (file name in ``work_dir``) and ``iter``.
        """
        floor_ratio = self.flops_ratio(self._floor)
        if self.targets[-1] < floor_ratio:
            raise ValueError(
                f'target_flops_ratios: {self.targets[-1]} is below '
                f'{floor_ratio:.4f}, the FLOPs of every space at its minimum '
                f'width (min_keep_ratio={self.min_keep_ratio})')
        if not self._load():
            kept = dict(self.spaces)
            res = self._evaluate(kept)
            self.trajectory = [{'iter': 0, 'kind': 'start', 'space': None,
                                'kept': kept, 'flops': int(res['flops']),
                                'flops_ratio': 1.0,
                                'top1': float(res['top1'])}]
            self._write()
        kept = dict(self.trajectory[-1]['kept'])
        it = self.trajectory[-1]['iter']
        iters_here = 0
        t_start = time.perf_counter()
        while True:
            pending = [t for t in self.targets if repr(t) not in self.results]
            if not pending:
                break
            t = pending[0]
            last = self.trajectory[-1]
            if last['flops_ratio'] <= t:  # an earlier refinement got here
                self._save_target(t, kept, last, it)
                self._write()
                continue
            if self.max_steps is not None and iters_here >= self.max_steps:
                print_log(f'autoslim search: stopped after {iters_here} '
                          'greedy steps (max_steps); rerun to continue',
                          logger='current')
                break
            it += 1
            iters_here += 1
            t0 = time.perf_counter()
            cands = {}
            for name in self.spaces:
                k2 = self._shrink(name, kept[name], self._amount(name))
                if k2 is None:
                    continue
                cand = {**kept, name: k2}
                res = self._evaluate(cand)
                cands[name] = (float(res['top1']),
                               res['flops'] / self.original_flops, k2, res)
            if not cands:
                raise RuntimeError(
                    f'autoslim search: every space is at its minimum width '
                    f'and the FLOPs ratio {last["flops_ratio"]:.4f} is still '
                    f'above the target {t}')
            # least accuracy lost; among equals the largest FLOPs cut
            ranking = sorted(cands, key=lambda n: (-cands[n][0],
                                                   cands[n][1]))
            best = ranking[0]
            top1, ratio, k2, res = cands[best]
            prev = kept
            kept = {**kept, best: k2}
            self.trajectory.append({
                'iter': it, 'kind': 'greedy', 'space': best,
                'kept': kept, 'flops': int(res['flops']),
                'flops_ratio': ratio, 'top1': top1,
                'candidates': {n: c[0] for n, c in cands.items()}})
            print_log(f'autoslim search step {it}: shrink {best} '
                      f'{prev[best]} -> {k2}, FLOPs ratio {ratio:.4f}, '
                      f'top-1 {top1:.2f} ({len(cands)} candidates, '
                      f'{time.perf_counter() - t0:.1f} s; next target {t:g})',
                      logger='current')
            if ratio <= t:
                if ratio < t * (1 - self.tolerance):
                    kept = self._fine_adjust(prev, ranking, t)
                    res = self._evaluate(kept)
                    ratio = res['flops'] / self.original_flops
                    self.trajectory.append({
                        'iter': it, 'kind': 'fine', 'space': None,
                        'kept': kept, 'flops': int(res['flops']),
                        'flops_ratio': ratio, 'top1': float(res['top1'])})
                    if not t * (1 - self.tolerance) <= ratio <= t:
                        print_log(f'autoslim search: refined FLOPs ratio '
                                  f'{ratio:.4f} is not within '
                                  f'{self.tolerance:.0%} below target {t}',
                                  logger='current', level=30)
                self.trajectory[-1]['target'] = t
                self._save_target(t, kept, res, it)
            self._write()
        done = all(repr(t) in self.results for t in self.targets)
        self._write(done=done)
        self._plot()
        if done:
            print_log(f'autoslim search: done, {self.num_evaluations} '
                      f'evaluations ({time.perf_counter() - t_start:.1f} s in '
                      'this run)', logger='current')
        return self.result_list()

    def result_list(self) -> list[dict]:
        """The reached targets' dicts (see :meth:`run`), highest first."""
        res = []
        for t in self.targets:
            entry = self.results.get(repr(t))
            if entry is not None:
                entry = dict(entry)
                entry['subnet'] = self.subnet(entry['kept'])
                res.append(entry)
        return res

    def _plot(self) -> None:
        path = self._path(TRAJECTORY.replace('.json', '.png'))
        if path is None or not is_main_process():
            return
        plot_trajectory(self.trajectory, path, self.targets,
                        title='AutoSlim greedy slimming')


def greedy_slim(pruner: ChannelPruner, evaluator,
                target_flops_ratios: Sequence[float] | float = (0.5,),
                step: int | float = 0.1, **kwargs) -> list[dict]:
    """AutoSlim's greedy slimming (see :class:`GreedySlimmer` for the
    arguments and the returned dicts)."""
    return GreedySlimmer(pruner, evaluator, target_flops_ratios, step,
                         **kwargs).run()
