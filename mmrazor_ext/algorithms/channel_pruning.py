"""One-shot and iterative channel pruning as mmengine models.

The algorithm wraps an ``architecture`` (as in MMRazor) and a
:class:`~mmrazor_ext.pruners.ChannelPruner`; :class:`PruningHook` calls it
at the Runner's named points. Fine-tuning runs in masked mode, so the
optimizer built by the Runner keeps valid parameters; the subnet and the
pruning step live in the algorithm's ``_extra_state``, which PyTorch loads
on the root module before its children, so ``--resume`` restores the masks.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable

from mmengine.logging import print_log
from torch import nn

from mmrazor_ext.metrics import ChannelMetric, collect_contents, collector_options
from mmrazor_ext.pruners import ChannelPruner
from mmrazor_ext.pruners.latency_target import (
    LATENCY_TABLE_OPTIONS,
    check_latency_target,
)
from mmrazor_ext.pruners.pruned_model import pruned_structure
from mmrazor_ext.registry import METRICS, MODELS
from mmrazor_ext.search.sensitivity import (
    allocate_by_sensitivity,
    check_sensitivity,
)
from mmrazor_ext.utils.evaluation import to_tensors

from .base import PruningAlgorithm

__all__ = ['IterativePruning', 'OneShotPruning']


@MODELS.register_module()
class OneShotPruning(PruningAlgorithm):
    """Score channels once, mask them, fine-tune, export.

    Args:
        architecture: Model config (or module) to prune, e.g. an mmpretrain
            ``ImageClassifier``.
        input_shape: Example input shape for tracing, e.g. ``(1, 1, 28, 28)``.
        metric: Channel metric name or config (``dict(type='cdp', coe=0)``);
            its ``needs`` says which data :func:`collect_contents` collects.
        metric_batches: Training batches used to collect features / Taylor
            gradients for data-driven metrics.
        cdp_by: CDP documents: ``'class'`` or ``'sample'``.
        target: ``dict(mode='flops', ratio=0.5)`` keeps 50 % of the FLOPs
            (``flops_ratio=0.5`` is the explicit name of that ``ratio``);
            ``mode='uniform'|'global'`` removes ``ratio`` of the channels;
            ``mode='nonuni'`` takes ``ratios={space: r}``. For ``flops``,
            ``sampling='uniform'|'global'|'sensitivity'`` chooses how
            channels are spread: the same prune ratio per space, one
            threshold over per-space normalised scores, or per-space keep
            ratios from measured damage
            (:func:`~mmrazor_ext.search.sensitivity.allocate_by_sensitivity`;
            the metric's scores still choose the channels inside a space).
            ``mode='latency'`` keeps ``ratio`` of the dense model's CPU
            latency, or reaches ``ms`` milliseconds per batch, estimated
            from a per-layer latency table measured on this machine
            (:mod:`~mmrazor_ext.pruners.latency_target`; keys ``batch=64``,
            ``grid=8``, ``repeats``, ``cache_dir``, ``num_threads``,
            ``tol``, ``sampling='efficient'|'uniform'|'global'``, and the
            closed loop that times the exported subnet and corrects the
            target: ``calibrate=True``, ``calib_iters``, ``calib_repeats``,
            ``calib_tol``).
        pruner: Extra :class:`ChannelPruner` arguments (``ignore_layers``,
            ``divisor``, ``min_channels``, ``leaf_modules``).
        init_checkpoint: Trained weights of ``architecture`` to start from
            (loaded with the safe loader).
        bn_recalib_batches: Training batches for BN recalibration right after
            pruning (0 disables it).
        data_preprocessor: Given to the architecture when its config has
            none (the Runner passes the config's top-level one).
        reconstruct: See :class:`PruningAlgorithm` (None: off).
        sensitivity: Options of ``sampling='sensitivity'``
            (:data:`~mmrazor_ext.search.sensitivity.SENSITIVITY_KEYS`:
            ``step=0.125`` (chunk: fraction of a space), ``bn_batches=5``,
            ``eval_batches=5`` (training batches after the BN ones, held
            out for the loss), ``refresh``, ``objective``, ``tol``,
            ``seed``, ``progress``).
    """

    TARGET_MODES = {'flops': 'ratio', 'uniform': 'ratio', 'global': 'ratio',
                    'nonuni': 'ratios', 'latency': 'ratio'}
    DEFAULT_TARGET = dict(mode='flops', ratio=0.5)
    METRIC_KIND = ChannelMetric

    def __init__(self, architecture: dict | nn.Module,
                 input_shape: Iterable[int] = (1, 3, 32, 32),
                 metric: str | dict = 'l1', metric_batches: int = 16,
                 cdp_by: str = 'class',
                 target: dict | None = None, pruner: dict | None = None,
                 init_checkpoint: str | None = None,
                 bn_recalib_batches: int = 20,
                 data_preprocessor: dict | None = None,
                 init_cfg: dict | None = None,
                 reconstruct: dict | None = None,
                 sensitivity: dict | None = None):
        super().__init__(architecture, input_shape, metric, target,
                         init_checkpoint, bn_recalib_batches,
                         data_preprocessor, init_cfg, reconstruct)
        if sensitivity is not None and \
                self.target.get('sampling') != 'sensitivity':
            raise ValueError("sensitivity: only used with target=dict("
                             "mode='flops', sampling='sensitivity'), got "
                             f'target {self.target}')
        self.sensitivity = check_sensitivity(sensitivity)
        self.metric_batches = int(metric_batches)
        self.cdp_by = cdp_by
        self.pruner = ChannelPruner(self.architecture, self.example_inputs,
                                    **(pruner or {}))

    @classmethod
    def check_target(cls, target: dict) -> dict:
        if isinstance(target, dict) and target.get('mode') == 'latency':
            # ratio *or* ms, plus the latency table options
            return check_latency_target(target)
        target = super().check_target(target)
        sampling = target.setdefault('sampling', 'global')
        if sampling not in ('uniform', 'global', 'sensitivity'):
            raise ValueError(f"target.sampling must be 'uniform', 'global' "
                             f"or 'sensitivity', got {sampling!r}")
        if sampling == 'sensitivity' and target['mode'] != 'flops':
            raise ValueError("target.sampling='sensitivity' needs "
                             f"mode='flops', got {target['mode']!r}")
        return target

    # -- mmengine model API -----------------------------------------------------------
    @property
    def subnet(self):
        return self.pruner.subnet

    def structure_state(self) -> dict:
        subnet = self.pruner.subnet or {}
        return {'subnet': {k: v.clone() for k, v in subnet.items()}}

    def load_structure_state(self, state: dict) -> None:
        subnet = state.get('subnet') or {}
        if subnet:
            self.pruner.set_subnet(subnet)
        else:
            self.pruner.clear_subnet()

    # -- pruning ---------------------------------------------------------------------
    def collect_contents(self, batches: Iterable) -> dict | None:
        """The data the metric declares in ``needs`` (None: weights)."""
        needs = METRICS.get(self.metric['type']).needs
        num_classes = getattr(getattr(self.architecture, 'head', None),
                              'num_classes', None)

        def loss_fn(batch):
            data = self.data_preprocessor(batch, True)
            losses = self.architecture(data['inputs'], data['data_samples'],
                                       'loss')
            return sum(v for k, v in losses.items() if 'loss' in k)
        return collect_contents(
            needs, self.pruner.graph, self.architecture,
            itertools.islice(batches, self.metric_batches),
            to_tensors=lambda b: to_tensors(self, b), loss_fn=loss_fn,
            forward=lambda m, x: m(x, mode='tensor'), by=self.cdp_by,
            num_classes=num_classes,
            **collector_options(self.metric)[1])

    def target_at(self, step: int) -> dict:
        """The target of pruning step ``step`` (1-based)."""
        return dict(self.target)

    def prune(self, batches: Iterable, step: int = 1) -> dict:
        """Score, sample and mask; returns the subnet."""
        contents = self.collect_contents(batches)
        scores = self.pruner.get_metric_local(
            collector_options(self.metric)[0], contents)
        t = self.target_at(step)
        if t['mode'] == 'flops' and t['sampling'] == 'sensitivity':
            subnet, rep = allocate_by_sensitivity(
                self.pruner, scores, t['ratio'], batches,
                start=self.pruner.subnet, **self.sensitivity)
            self.report[f'sensitivity_step{step}'] = {
                k: v for k, v in rep.items() if k != 'trajectory'}
        elif t['mode'] == 'flops':
            subnet = self.pruner.sample_subnet_for_flops(
                t['ratio'], scores, mode=t['sampling'])
        elif t['mode'] == 'latency':
            subnet = self.pruner.sample_subnet_for_latency(
                t.get('ratio'), scores, mode=t['sampling'], ms=t.get('ms'),
                tol=t.get('tol', 0.01), **self.latency_options())
            self.report[f'latency_step{step}'] = \
                self.pruner.last_latency_report
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

    def latency_options(self) -> dict:
        """Latency table options of a ``mode='latency'`` target."""
        return {k: self.target[k] for k in LATENCY_TABLE_OPTIONS
                if k in self.target}

    # -- export -----------------------------------------------------------------------
    def export_model(self) -> nn.Module:
        """The physically sliced model (checked against the masked one)."""
        return self.pruner.export()

    def export_check(self, small: nn.Module) -> dict:
        return self.pruner.last_export_report

    def pruned_structure(self) -> dict:
        return pruned_structure(self.pruner)


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
        if t['mode'] == 'latency' and 'ms' in t:
            # the final keep ratio of the measured dense latency
            dense = self.pruner.latency_model(
                **self.latency_options()).dense_s
            t['ratio'] = min(0.999, t.pop('ms') / 1e3 / dense)
        if t['mode'] in ('flops', 'latency'):
            t['ratio'] = 1 - (1 - t['ratio']) * f
            if t['ratio'] >= 1:
                t['ratio'] = 0.999
        elif t['mode'] == 'nonuni':
            t['ratios'] = {k: v * f for k, v in t['ratios'].items()}
        else:
            t['ratio'] = t['ratio'] * f
        return t

