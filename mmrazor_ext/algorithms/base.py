"""Bases of algorithms that wrap an ``architecture`` (as in MMRazor).

:class:`ArchitectureAlgorithm` builds the architecture and loads trained
weights; :class:`PruningAlgorithm` is the interface
:class:`~mmrazor_ext.engine.hooks.PruningHook` drives (channel pruning,
layer fusion, AMC), with the shared target validation and export.
"""
from __future__ import annotations

import copy
import functools
import json
import os
import os.path as osp
from abc import abstractmethod
from collections.abc import Iterable

import torch
from mmengine.logging import print_log
from mmengine.model import BaseModel
from torch import nn

from mmrazor_ext.engine.checkpoint import safe_load
from mmrazor_ext.estimators import get_model_complexity
from mmrazor_ext.pruners import (
    RECONSTRUCTION_METHODS,
    check_prunable,
    check_ridge,
)
from mmrazor_ext.pruners.pruned_model import save_pruned
from mmrazor_ext.registry import METRICS, MODELS
from mmrazor_ext.utils.evaluation import evaluate_top1
from mmrazor_ext.utils.io import atomic_write_json

__all__ = ['ArchitectureAlgorithm', 'PruningAlgorithm', 'RECONSTRUCT_KEYS',
           'check_reconstruct']


class ArchitectureAlgorithm(BaseModel):
    """Builds the architecture, shares its preprocessor, loads trained weights.

    Args:
        architecture: Model config (or module) the algorithm compresses.
        init_checkpoint: Trained weights of ``architecture`` (safe loader).
        data_preprocessor: Given to the architecture when its config has
            none (the Runner passes the config's top-level one).
        init_cfg: mmengine init config.
    """

    def __init__(self, architecture: dict | nn.Module,
                 init_checkpoint: str | None = None,
                 data_preprocessor: dict | None = None,
                 init_cfg: dict | None = None):
        if isinstance(architecture, dict):
            # One preprocessor for both, so the exported copy normalises
            # inputs exactly as the algorithm did.
            architecture = dict(architecture)
            if data_preprocessor is not None:
                architecture.setdefault('data_preprocessor', data_preprocessor)
            architecture = MODELS.build(architecture)
        super().__init__(data_preprocessor=architecture.data_preprocessor,
                         init_cfg=init_cfg)
        self.architecture = architecture
        self.init_checkpoint = init_checkpoint
        if init_checkpoint:
            state = safe_load(init_checkpoint)
            state = state.get('state_dict', state)
            # A checkpoint of another algorithm (e.g. an AutoSlim supernet)
            # stores the same network under ``architecture.``.
            prefix = 'architecture.'
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
            self.architecture.load_state_dict(state)
            print_log(f'loaded {init_checkpoint}', logger='current')

    def init_weights(self) -> None:
        # The Runner calls init_weights() after building the model; that
        # would re-initialise the architecture from its init_cfg and discard
        # the trained init_checkpoint loaded in __init__.
        if self.init_checkpoint:
            return
        super().init_weights()

    def forward(self, inputs, data_samples=None, mode: str = 'tensor'):
        return self.architecture(inputs, data_samples, mode)


def _check_ratio(value, mode: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not 0 < value < 1:
        raise ValueError(f'target.ratio must be in (0, 1), got {value!r}')


def _check_ratios(value, mode: str) -> None:
    if not isinstance(value, dict):
        raise ValueError(f'target.ratios: mode "{mode}" needs a dict '
                         '{space name: ratio}')


def _check_num(value, mode: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f'target.num must be an int >= 0, got {value!r}')


#: target field -> its check
_TARGET_FIELDS = {'ratio': _check_ratio, 'ratios': _check_ratios,
                  'num': _check_num}

#: ``reconstruct=dict(...)`` keys (arguments of ChannelPruner.reconstruct)
RECONSTRUCT_KEYS = ('method', 'num_batches', 'ridge', 'bn_recalib',
                    'points_per_image', 'layers', 'seed', 'max_cache_mb')


def check_reconstruct(cfg) -> dict | None:
    """A validated copy of an algorithm's ``reconstruct`` option.

    Raises:
        ValueError: Naming the bad field (``reconstruct.method`` ...).
    """
    if cfg is None:
        return None
    if not isinstance(cfg, dict):
        raise ValueError("reconstruct: expected None or a dict such as "
                         "dict(method='least_squares', num_batches=20), got "
                         f'{cfg!r}')
    cfg = dict(cfg)
    unknown = set(cfg) - set(RECONSTRUCT_KEYS)
    if unknown:
        raise ValueError(f'reconstruct: unknown keys {sorted(unknown)} '
                         f'(known: {list(RECONSTRUCT_KEYS)})')
    cfg.setdefault('method', 'least_squares')
    if cfg['method'] not in RECONSTRUCTION_METHODS:
        raise ValueError(f'reconstruct.method must be one of '
                         f"{RECONSTRUCTION_METHODS}, got {cfg['method']!r}")
    for key in ('num_batches', 'points_per_image', 'seed'):
        v = cfg.get(key, 1)
        low = 0 if key == 'seed' else 1
        if (v is not None or key != 'points_per_image') and (
                isinstance(v, bool) or not isinstance(v, int) or v < low):
            raise ValueError(f'reconstruct.{key} must be an int >= {low}, '
                             f'got {v!r}')
    if 'ridge' in cfg:
        check_ridge(cfg['ridge'], 'reconstruct.ridge')
    if not isinstance(cfg.get('bn_recalib', True), bool):
        raise ValueError('reconstruct.bn_recalib must be a bool, got '
                         f"{cfg['bn_recalib']!r}")
    mb = cfg.get('max_cache_mb', 0)
    if isinstance(mb, bool) or not isinstance(mb, (int, float)) or mb < 0:
        raise ValueError(f'reconstruct.max_cache_mb must be >= 0, got {mb!r}')
    if cfg.get('layers') is not None:
        if isinstance(cfg['layers'], str):
            raise ValueError('reconstruct.layers must be a list of layer '
                             f"names, got {cfg['layers']!r}")
        cfg['layers'] = list(cfg['layers'])
    return cfg


class PruningAlgorithm(ArchitectureAlgorithm):
    """The interface :class:`~mmrazor_ext.engine.hooks.PruningHook` drives.

    Before training the hook records :meth:`complexity` and accuracy in
    :attr:`report`, calls :meth:`prune` (step 1), :meth:`reconstruct_pruned`
    (when ``reconstruct`` is set) and recalibrates BN on
    :attr:`bn_recalib_batches` batches; every :attr:`interval` epochs it
    takes the next step until :attr:`num_steps`; after training it calls
    :meth:`export`. :attr:`step` and :attr:`report` go into the checkpoint
    (``_extra_state``, with :meth:`structure_state`), so ``--resume``
    restores the pruned structure before the weights.

    Subclasses set :attr:`TARGET_MODES`, :attr:`DEFAULT_TARGET`,
    :attr:`METRIC_KIND` and implement :meth:`prune`, :meth:`export_model`,
    :meth:`export_check`, :meth:`pruned_structure`,
    :meth:`structure_state` and :meth:`load_structure_state`.

    Args:
        architecture: Model config (or module) to compress.
        input_shape: Example input shape for tracing, e.g. ``(1, 1, 28, 28)``.
        metric: Metric name or config (``dict(type='cdp', coe=0)``) of
            the ``METRICS`` registry.
        target: Validated by :meth:`check_target`; default
            :attr:`DEFAULT_TARGET`.
        init_checkpoint: Trained weights of ``architecture``.
        bn_recalib_batches: Training batches for BN recalibration after
            each pruning step (0 disables it).
        data_preprocessor: See :class:`ArchitectureAlgorithm`.
        init_cfg: mmengine init config.
        reconstruct: None (off) or ``dict(method='least_squares',
            num_batches=20, ridge=1e-5, bn_recalib=True,
            points_per_image=32, ...)``: after each pruning step, before BN
            recalibration and fine-tuning, refit the layers that consume
            pruned channels on that many training batches so that their
            outputs match the model before the step
            (:meth:`ChannelPruner.reconstruct`). The refitted weights are
            parameters of the masked model, so checkpoints (and
            ``--resume``) carry them.

    Attributes:
        metric (dict): ``dict(type=name, ...)``.
        target (dict): The validated target.
        step (int): Pruning steps done (0: not pruned yet).
        report (dict): Written to ``report.json`` by :meth:`export`; the
            hook adds accuracies.
        example_inputs (torch.Tensor): Random input of ``input_shape``.
    """

    #: target modes -> the field each one requires (``ratio``: a fraction
    #: in (0, 1); ``ratios``: ``{space: ratio}``; ``num``: an int >= 0)
    TARGET_MODES: dict[str, str] = {}
    #: target used when none is given
    DEFAULT_TARGET: dict = {}
    #: base class the metric must be a subclass of
    METRIC_KIND: type = object
    #: epochs of fine-tuning between pruning steps (None: one step only)
    interval: int | None = None
    #: extra tracer leaf modules (FLOPs counting, export)
    leaf_modules: tuple = ()

    def __init__(self, architecture: dict | nn.Module,
                 input_shape: Iterable[int] = (1, 3, 32, 32),
                 metric: str | dict = 'l1', target: dict | None = None,
                 init_checkpoint: str | None = None,
                 bn_recalib_batches: int = 20,
                 data_preprocessor: dict | None = None,
                 init_cfg: dict | None = None,
                 reconstruct: dict | None = None):
        super().__init__(architecture, init_checkpoint, data_preprocessor,
                         init_cfg)
        self.reconstruct_cfg = check_reconstruct(reconstruct)
        #: layers given a new bias by reconstruction (re-created on resume)
        self.reconstructed_biases: list[str] = []
        self.metric = metric if isinstance(metric, dict) else dict(type=metric)
        cls = METRICS.get(self.metric['type'])
        if cls is None or not issubclass(cls, self.METRIC_KIND):
            known = sorted(n for n, c in METRICS.module_dict.items()
                           if issubclass(c, self.METRIC_KIND))
            raise KeyError(f"metric: {self.metric['type']!r} is not a "
                           f'{self.METRIC_KIND.__name__} of the METRICS '
                           f'registry (known: {known})')
        self.target = self.check_target(target or self.DEFAULT_TARGET)
        self.bn_recalib_batches = int(bn_recalib_batches)
        self.input_shape = tuple(input_shape)
        self.example_inputs = torch.randn(*self.input_shape)
        self.step = 0
        self.report: dict = {}

    # -- config checks ----------------------------------------------------------
    @classmethod
    def check_target(cls, target: dict) -> dict:
        """A validated copy of ``target``.

        ``mode='flops'`` keeps the fraction ``ratio`` of the FLOPs;
        ``flops_ratio`` is accepted as its explicit name (stored as
        ``ratio``).

        Raises:
            ValueError: Naming the bad field.
        """
        target = dict(target)
        mode = target.setdefault('mode', cls.DEFAULT_TARGET.get('mode'))
        if mode not in cls.TARGET_MODES:
            raise ValueError(f'target.mode must be one of '
                             f'{tuple(cls.TARGET_MODES)}, got {mode!r}')
        if 'flops_ratio' in target:
            if mode != 'flops':
                raise ValueError("target.flops_ratio: only with mode 'flops' "
                                 f'(the fraction of FLOPs kept), got {mode!r}')
            value = target.pop('flops_ratio')
            if target.setdefault('ratio', value) != value:
                raise ValueError('target: flops_ratio and ratio differ; give '
                                 'one of them')
        field = cls.TARGET_MODES[mode]
        _TARGET_FIELDS[field](target.get(field), mode)
        return target

    # -- checkpoint state -------------------------------------------------------
    def get_extra_state(self) -> dict:
        # Plain containers and tensors only: loads with weights_only=True.
        state = {'step': self.step, **self.structure_state(),
                 'report': json.loads(json.dumps(self.report))}
        if self.reconstructed_biases:
            state['reconstructed_biases'] = list(self.reconstructed_biases)
        return state

    def set_extra_state(self, state: dict) -> None:
        self.step = int(state.get('step', 0))
        self.report = dict(state.get('report') or {})
        self.load_structure_state(state)
        # loaded before the children: give these layers their bias back so
        # the checkpoint's refitted bias has a parameter to load into
        self.reconstructed_biases = list(state.get('reconstructed_biases')
                                         or [])
        for name in self.reconstructed_biases:
            _add_bias(self.architecture.get_submodule(name))

    @abstractmethod
    def structure_state(self) -> dict:
        """The pruned structure as plain containers / tensors."""

    @abstractmethod
    def load_structure_state(self, state: dict) -> None:
        """Re-apply :meth:`structure_state` (on resume)."""

    # -- pruning ----------------------------------------------------------------
    @property
    def num_steps(self) -> int:
        """Pruning steps in total."""
        return 1

    @abstractmethod
    def prune(self, batches: Iterable, step: int = 1):
        """Pruning step ``step`` (1-based) using training ``batches``.

        Every subclass's ``prune`` is wrapped (``__init_subclass__``) by
        :meth:`check_prunable` before and :meth:`check_reduction` after, so
        a pruner with nothing to prune, or one far from its target, is an
        error naming the cause instead of a finished run.
        """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        prune = cls.__dict__.get('prune')
        if prune is None or getattr(prune, '_checked', False) or \
                getattr(prune, '__isabstractmethod__', False):
            return

        @functools.wraps(prune)
        def checked(self, batches, step=1, *args, **kwargs):
            # only the outermost call checks (a subclass may call super())
            outer = not getattr(self, '_in_checked_prune', False)
            if outer:
                self.check_prunable()
            self._in_checked_prune = True
            try:
                result = prune(self, batches, step, *args, **kwargs)
            finally:
                if outer:
                    self._in_checked_prune = False
            if outer:
                self.check_reduction(step)
            return result
        checked._checked = True
        cls.prune = checked

    #: how far above its target a step's kept MACs fraction may end
    REDUCTION_SLACK = 0.15

    def check_prunable(self) -> None:
        """Raise :class:`~mmrazor_ext.pruners.PinnedChannelsError` when the
        channel pruner has no prunable space (the message gives the top
        reasons of :meth:`ChannelPruner.report`)."""
        pruner = self.channel_pruner()
        if pruner is not None:
            check_prunable(pruner)

    def check_reduction(self, step: int) -> None:
        """Raise :class:`~mmrazor_ext.pruners.PinnedChannelsError` when the
        kept MACs fraction after step ``step`` exceeds its target's by more
        than :attr:`REDUCTION_SLACK` (target: ``ratio`` of ``mode='flops'``,
        ``1 - ratio`` of ``'uniform'`` / ``'global'`` channel pruning; other
        modes are not checked)."""
        pruner = self.channel_pruner()
        if pruner is None or not pruner.subnet:
            return
        target_at = getattr(self, 'target_at', None)
        t = target_at(step) if callable(target_at) else self.target
        mode = t.get('mode')
        if mode == 'flops':
            keep = t['ratio']
        elif mode in ('uniform', 'global'):
            keep = 1 - t['ratio']
        else:
            return
        achieved = pruner.estimate_flops(pruner.subnet) / \
            max(pruner.original_flops, 1)
        check_prunable(pruner, achieved, keep, self.REDUCTION_SLACK)

    # -- reconstruction ---------------------------------------------------------
    def channel_pruner(self):
        """The :class:`~mmrazor_ext.pruners.ChannelPruner` whose masks carry
        the channel pruning (None: no channel pruning); default: the
        ``pruner`` attribute."""
        return getattr(self, 'pruner', None)

    def reconstruction_reference(self) -> nn.Module | None:
        """What :meth:`reconstruct_pruned` reproduces, taken by the hook just
        before :meth:`prune`: a copy of the architecture as it is then (the
        dense model at step 1, the masked one of the previous step later);
        None when ``reconstruct`` is off."""
        if self.reconstruct_cfg is None:
            return None
        return copy.deepcopy(self.architecture)

    def reconstruct_pruned(self, batches: Iterable,
                           reference: nn.Module | None = None
                           ) -> dict | None:
        """Refit the consumers of the channels pruned by the last step
        (``reconstruct`` option; :meth:`ChannelPruner.reconstruct`).

        Args:
            batches: Training batches (the first ``num_batches`` are used).
            reference: From :meth:`reconstruction_reference` (None: a
                dense copy of the masked model).

        Returns:
            The reconstruction report, or None when ``reconstruct`` is off
            or nothing is pruned. A summary goes to :attr:`report`
            (``reconstruction_step{k}``).
        """
        cfg, pruner = self.reconstruct_cfg, self.channel_pruner()
        if cfg is None:
            return None
        if pruner is None or not pruner.subnet or all(
                bool(m.all()) for m in pruner.subnet.values()):
            print_log('reconstruct: no pruned channels, nothing to refit',
                      logger='current', level=30)
            return None
        rep = pruner.reconstruct(batches, reference=reference, **cfg)
        layers = rep['layers'].values()
        for name, r in rep['layers'].items():
            if r.get('offset_to') == 'new_bias' and \
                    name not in self.reconstructed_biases:
                self.reconstructed_biases.append(name)

        def mean(key):
            vals = [r[key] for r in layers if key in r]
            return sum(vals) / len(vals) if vals else None
        self.report[f'reconstruction_step{self.step}'] = {
            'config': cfg, 'layers': len(rep['layers']),
            'skipped': rep['skipped'], 'cached': rep['cached'],
            'seconds': round(rep['seconds'], 3),
            'mean_rel_error_before': mean('rel_error_before'),
            'mean_rel_error_after': mean('rel_error_after')}
        return rep

    def complexity(self, model: nn.Module | None = None) -> dict:
        """``{'flops', 'params'}`` of ``model`` (default: the
        architecture)."""
        model = model if model is not None else self.architecture
        return get_model_complexity(model, (self.example_inputs,),
                                    leaf_modules=self.leaf_modules)

    # -- export -----------------------------------------------------------------
    @abstractmethod
    def export_model(self) -> nn.Module:
        """The deployable model (a copy; the algorithm is unchanged)."""

    @abstractmethod
    def export_check(self, small: nn.Module) -> dict:
        """Equivalence of ``small`` and the algorithm's model."""

    @abstractmethod
    def pruned_structure(self) -> dict:
        """The structure to save (:func:`~.pruned_model.pruned_structure`)."""

    def export_summary(self) -> str:
        """What the export log line starts with."""
        return 'exported'

    def export(self, work_dir: str, val_batches: Iterable | None = None
               ) -> dict:
        """Write ``pruned_model.pth``, ``subnet.json`` (format of
        :mod:`.pruned_model`) and ``report.json``; returns the report."""
        os.makedirs(work_dir, exist_ok=True)
        small = self.export_model()
        report = save_pruned(self, work_dir, small, self.pruned_structure(),
                             self.export_check(small))
        if val_batches is not None:
            report['top1_after'] = evaluate_top1(small, val_batches)
        atomic_write_json(osp.join(work_dir, 'report.json'), report,
                          indent=2)
        self.report = report
        print_log(f"{self.export_summary()}: FLOPs "
                  f"{report.get('flops_before', 0) / 1e6:.2f} M -> "
                  f"{report['flops_after'] / 1e6:.2f} M, params "
                  f"{report.get('params_before', 0) / 1e6:.3f} M -> "
                  f"{report['params_after'] / 1e6:.3f} M; files in {work_dir}",
                  logger='current')
        return report


@torch.no_grad()
def _add_bias(mod: nn.Module) -> None:
    """A zero bias parameter for a conv / linear layer that has none."""
    if getattr(mod, 'bias', None) is None:
        w = mod.weight
        mod.bias = nn.Parameter(w.new_zeros(w.shape[0]),
                                requires_grad=w.requires_grad)
