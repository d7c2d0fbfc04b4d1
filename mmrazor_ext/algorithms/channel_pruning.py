"""One-shot and iterative channel pruning as mmengine models.

The algorithm wraps an ``architecture`` (as in MMRazor) and a
:class:`~mmrazor_ext.pruners.ChannelPruner`; :class:`PruningHook` calls it
at the Runner's named points. Fine-tuning runs in masked mode, so the
optimizer built by the Runner keeps valid parameters; the subnet and the
pruning step live in the algorithm's ``_extra_state``, which PyTorch loads
on the root module before its children, so ``--resume`` restores the masks.
"""
from __future__ import annotations

import json
import os
import os.path as osp
from collections.abc import Iterable

import torch
from mmengine.logging import print_log
from torch import nn

from mmrazor_ext.algorithms.base import ArchitectureAlgorithm
from mmrazor_ext.estimators import get_model_complexity
from mmrazor_ext.metrics import (
    FeatureCollector,
    FMReconstructionCollector,
    TaylorAccumulator,
)
from mmrazor_ext.pruners import ChannelPruner
from mmrazor_ext.registry import METRICS, MODELS
from mmrazor_ext.utils.evaluation import evaluate_top1, to_tensors

_FEATURE_STATS = {'cdp': 'pooled', 'apoz': 'zeros', 'hrank': 'rank'}
_MODES = ('flops', 'uniform', 'global', 'nonuni')


def _write_json(path: str, data) -> None:
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


@MODELS.register_module()
class OneShotPruning(ArchitectureAlgorithm):
    """Score channels once, mask them, fine-tune, export.

    Args:
        architecture: Model config (or module) to prune, e.g. an mmpretrain
            ``ImageClassifier``.
        input_shape: Example input shape for tracing, e.g. ``(1, 1, 28, 28)``.
        metric: Metric name or config (``dict(type='cdp', coe=0)``).
        metric_batches: Training batches used to collect features / Taylor
            gradients for data-driven metrics.
        cdp_by: CDP documents: ``'class'`` or ``'sample'``.
        target: ``dict(mode='flops', ratio=0.5)`` keeps 50 % of the FLOPs;
            ``mode='uniform'|'global'`` removes ``ratio`` of the channels;
            ``mode='nonuni'`` takes ``ratios={space: r}``. For ``flops``,
            ``sampling='uniform'|'global'`` chooses how channels are spread.
        pruner: Extra :class:`ChannelPruner` arguments (``ignore_layers``,
            ``divisor``, ``min_channels``, ``leaf_modules``).
        init_checkpoint: Trained weights of ``architecture`` to start from
            (loaded with the safe loader).
        bn_recalib_batches: Training batches for BN recalibration right after
            pruning (0 disables it).
        data_preprocessor: Given to the architecture when its config has
            none (the Runner passes the config's top-level one).
    """

    def __init__(self, architecture: dict | nn.Module,
                 input_shape: Iterable[int] = (1, 3, 32, 32),
                 metric: str | dict = 'l1', metric_batches: int = 16,
                 cdp_by: str = 'class',
                 target: dict | None = None, pruner: dict | None = None,
                 init_checkpoint: str | None = None,
                 bn_recalib_batches: int = 20,
                 data_preprocessor: dict | None = None,
                 init_cfg: dict | None = None):
        super().__init__(architecture, init_checkpoint, data_preprocessor,
                         init_cfg)
        self.target = self._check_target(target or dict(mode='flops',
                                                        ratio=0.5))
        self.metric = metric if isinstance(metric, dict) else dict(type=metric)
        if METRICS.get(self.metric['type']) is None:
            raise KeyError(f"metric: {self.metric['type']!r} is not in the "
                           f'METRICS registry (known: '
                           f'{sorted(METRICS.module_dict)})')
        self.metric_batches = int(metric_batches)
        self.cdp_by = cdp_by
        self.bn_recalib_batches = int(bn_recalib_batches)
        self.example_inputs = torch.randn(*tuple(input_shape))
        self.pruner = ChannelPruner(self.architecture, self.example_inputs,
                                    **(pruner or {}))
        self.step = 0            # pruning steps done
        self.report: dict = {}

    # -- config checks ------------------------------------------------------------
    @staticmethod
    def _check_target(target: dict) -> dict:
        target = dict(target)
        mode = target.get('mode', 'flops')
        if mode not in _MODES:
            raise ValueError(f'target.mode must be one of {_MODES}, got '
                             f'{mode!r}')
        if mode == 'nonuni':
            if not isinstance(target.get('ratios'), dict):
                raise ValueError('target.ratios: mode "nonuni" needs a dict '
                                 '{space name: ratio}')
        else:
            ratio = target.get('ratio')
            if not isinstance(ratio, (int, float)) or not 0 < ratio < 1:
                raise ValueError(f'target.ratio must be in (0, 1), got '
                                 f'{ratio!r}')
        sampling = target.get('sampling', 'global')
        if sampling not in ('uniform', 'global'):
            raise ValueError(f"target.sampling must be 'uniform' or "
                             f"'global', got {sampling!r}")
        target['mode'], target['sampling'] = mode, sampling
        return target

    # -- mmengine model API -----------------------------------------------------------
    @property
    def subnet(self):
        return self.pruner.subnet

    def get_extra_state(self) -> dict:
        subnet = self.pruner.subnet or {}
        # Plain containers and tensors only: loads with weights_only=True.
        return {'step': self.step,
                'subnet': {k: v.clone() for k, v in subnet.items()},
                'report': json.loads(json.dumps(self.report))}

    def set_extra_state(self, state: dict) -> None:
        self.step = int(state.get('step', 0))
        self.report = dict(state.get('report') or {})
        subnet = state.get('subnet') or {}
        if subnet:
            self.pruner.set_subnet(subnet)
        else:
            self.pruner.clear_subnet()

    # -- pruning ---------------------------------------------------------------------
    def collect_contents(self, batches: Iterable) -> dict | None:
        """Data the metric needs (features, Taylor scores) or None."""
        name = self.metric['type']
        batches = list(_take(batches, self.metric_batches))
        if name in _FEATURE_STATS:
            num_classes = getattr(getattr(self.architecture, 'head', None),
                                  'num_classes', None)
            col = FeatureCollector(self.pruner.graph,
                                   stats=(_FEATURE_STATS[name],),
                                   by=self.cdp_by, num_classes=num_classes)
            for batch in batches:
                col.update(*to_tensors(self, batch))
            return {'cdp': col.documents, 'apoz': col.zero_fraction,
                    'hrank': col.mean_rank}[name]()
        if name == 'fm_reconstruction':
            col = FMReconstructionCollector(
                self.pruner.graph, self.architecture,
                n_points_per_fm=self.metric.get('n_points_per_fm', 10))
            return col.collect(
                [to_tensors(self, b)[0] for b in batches],
                forward=lambda m, x: m(x, mode='tensor'))
        if name == 'taylor':
            acc = TaylorAccumulator(self.pruner.graph, self.architecture)

            def loss_fn(batch):
                data = self.data_preprocessor(batch, True)
                losses = self.architecture(data['inputs'],
                                           data['data_samples'], 'loss')
                return sum(v for k, v in losses.items() if 'loss' in k)
            return acc.run(batches, loss_fn)
        return None

    def target_at(self, step: int) -> dict:
        """The target of pruning step ``step`` (1-based)."""
        return dict(self.target)

    def prune(self, batches: Iterable, step: int = 1) -> dict:
        """Score, sample and mask; returns the subnet."""
        contents = self.collect_contents(batches)
        metric = {k: v for k, v in self.metric.items()
                  if k != 'n_points_per_fm'}  # a collector option
        scores = self.pruner.get_metric_local(metric, contents)
        t = self.target_at(step)
        if t['mode'] == 'flops':
            subnet = self.pruner.sample_subnet_for_flops(
                t['ratio'], scores, mode=t['sampling'])
        elif t['mode'] == 'uniform':
            subnet = self.pruner.sample_subnet_uniform(t['ratio'], scores)
        elif t['mode'] == 'global':
            subnet = self.pruner.sample_subnet_diff(t['ratio'], scores)
        else:
            subnet = self.pruner.sample_subnet_nonuni(t['ratios'], scores)
        self.pruner.set_subnet(subnet)
        self.step = step
        kept = sum(int(m.sum()) for m in subnet.values())
        total = sum(m.numel() for m in subnet.values())
        print_log(f'pruning step {step}: metric {self.metric["type"]}, kept '
                  f'{kept}/{total} channels, FLOPs '
                  f'{self.pruner.estimate_flops(subnet) / 1e6:.2f} M of '
                  f'{self.pruner.original_flops / 1e6:.2f} M',
                  logger='current')
        return subnet

    @property
    def num_steps(self) -> int:
        return 1

    def complexity(self, model: nn.Module | None = None) -> dict:
        model = model if model is not None else self.architecture
        return get_model_complexity(model, (self.example_inputs,))

    def export(self, work_dir: str, val_batches: Iterable | None = None
               ) -> dict:
        """Write ``pruned_model.pth``, ``subnet.json``, ``report.json``."""
        os.makedirs(work_dir, exist_ok=True)
        small = self.pruner.export()
        subnet_path = osp.join(work_dir, 'subnet.json')
        self.pruner.save_subnet(subnet_path, weights=False)
        report = save_pruned(self, work_dir, small, subnet_path,
                             self.pruner.last_export_report)
        if val_batches is not None:
            report['top1_after'] = evaluate_top1(small, val_batches)
        _write_json(osp.join(work_dir, 'report.json'), report)
        self.report = report
        print_log(f"exported: FLOPs {report['flops_before'] / 1e6:.2f} M -> "
                  f"{report['flops_after'] / 1e6:.2f} M, params "
                  f"{report['params_before'] / 1e6:.3f} M -> "
                  f"{report['params_after'] / 1e6:.3f} M; files in {work_dir}",
                  logger='current')
        return report


@MODELS.register_module()
class IterativePruning(OneShotPruning):
    """Reach the target in ``num_steps`` pruning steps, re-scoring and
    fine-tuning ``interval`` epochs between steps.

    Args:
        num_steps: Number of pruning steps.
        interval: Epochs of fine-tuning after each step.
        schedule: ``'linear'`` or ``'cubic'`` (Zhu & Gupta: prunes fast
            first, then slowly) interpolation of the removed amount.
        **kwargs: :class:`OneShotPruning` arguments.
    """

    def __init__(self, *args, num_steps: int = 3, interval: int = 1,
                 schedule: str = 'linear', **kwargs):
        super().__init__(*args, **kwargs)
        if num_steps < 1 or interval < 1:
            raise ValueError(f'num_steps and interval must be >= 1, got '
                             f'{num_steps}, {interval}')
        if schedule not in ('linear', 'cubic'):
            raise ValueError(f"schedule must be 'linear' or 'cubic', got "
                             f'{schedule!r}')
        self._num_steps = int(num_steps)
        self.interval = int(interval)
        self.schedule = schedule

    @property
    def num_steps(self) -> int:
        return self._num_steps

    def fraction(self, step: int) -> float:
        """Fraction of the final pruning amount reached at ``step``."""
        x = min(max(step / self._num_steps, 0.0), 1.0)
        return x if self.schedule == 'linear' else 1 - (1 - x) ** 3

    def target_at(self, step: int) -> dict:
        t = dict(self.target)
        f = self.fraction(step)
        if t['mode'] == 'flops':
            t['ratio'] = 1 - (1 - t['ratio']) * f
            if t['ratio'] >= 1:
                t['ratio'] = 0.999
        elif t['mode'] == 'nonuni':
            t['ratios'] = {k: v * f for k, v in t['ratios'].items()}
        else:
            t['ratio'] = t['ratio'] * f
        return t


def save_pruned(algo, work_dir: str, small: nn.Module, subnet_path: str,
                export_check) -> dict:
    """Write ``pruned_model.pth`` (temp file, then rename); ``algo``'s report
    updated with the exported model's FLOPs and params."""
    ckpt = osp.join(work_dir, 'pruned_model.pth')
    tmp = ckpt + '.tmp'
    torch.save({'state_dict': small.state_dict(),
                'meta': {'subnet': osp.basename(subnet_path),
                         'algorithm': type(algo).__name__}}, tmp)
    os.replace(tmp, ckpt)
    after = algo.complexity(small)
    report = dict(algo.report)
    report.update(
        flops_after=after['flops'], params_after=after['params'],
        flops_ratio=after['flops'] / max(report.get('flops_before', 1), 1),
        export_check=export_check, pruned_model=ckpt, subnet=subnet_path)
    return report


def _take(batches, n):
    for i, batch in enumerate(batches):
        if i >= n:
            break
        yield batch
