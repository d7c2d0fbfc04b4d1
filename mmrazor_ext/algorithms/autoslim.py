"""AutoSlim (Yu & Huang, 2019): slimmable training, then greedy slimming.

Training (:class:`AutoSlim`, or :func:`sandwich_train` without the Runner)
runs the shared weights in masked mode with the *sandwich rule*: every step
forwards the largest width, the smallest (``min_ratio`` of every channel
space) and ``num_random`` random widths, accumulates their gradients and
takes one optimizer step. The largest width learns from the labels; the
others learn from its detached logits (in-place distillation, KL at a
temperature). Widths always keep the *first* channels of a space (the
slimmable convention), so a narrower subnet is a prefix of a wider one.

BatchNorm: only the largest width updates the running statistics (the
others normalise with their batch statistics and leave the running ones
alone), and the masks are cleared at the end of every step. Validation
during training therefore measures the full width exactly; a narrower
subnet is scored after adaptive BN (its statistics re-estimated on a few
training batches, as the search does).

Search (:func:`greedy_slim`, or :class:`AutoSlimSearchLoop` from a config):
starting from the full width, shrink by ``step`` the space whose shrink
costs the least held-out accuracy (each candidate scored by
:class:`~mmrazor_ext.search.AdaptiveBNEvaluator`), until the FLOPs fall to
each target; the step that crosses a target is refined channel group by
channel group so that the subnet lands within ``tolerance`` (2 %) below it.
One subnet JSON per target (:meth:`ChannelPruner.save_subnet` format), the
trajectory ``autoslim_search.json`` (rewritten after every greedy step; a
restarted search resumes from it) and a PNG curve go to the work dir.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import json
import math
import os.path as osp
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from mmengine.dist import is_main_process
from mmengine.logging import print_log
from mmengine.model import (
    BaseModel,
    MMDistributedDataParallel,
    is_model_wrapper,
)
from mmengine.optim import OptimWrapper
from mmengine.runner import BaseLoop
from torch import nn

from mmrazor_ext.algorithms.base import ArchitectureAlgorithm
from mmrazor_ext.engine.checkpoint import safe_load
from mmrazor_ext.pruners import ChannelPruner
from mmrazor_ext.registry import LOOPS, MODEL_WRAPPERS, MODELS
from mmrazor_ext.search import bn_state, load_bn_state, ratio_grid
from mmrazor_ext.utils.evaluation import recalibrate_bn
from mmrazor_ext.utils.io import atomic_write

__all__ = ['AutoSlim', 'AutoSlimDDP', 'AutoSlimSearchLoop', 'GreedySlimmer',
           'SandwichRule', 'greedy_slim', 'plot_trajectory',
           'sandwich_train']

TRAJECTORY = 'autoslim_search.json'
_FORMAT = 'mmrazor_ext.autoslim_search'


# -- helpers ----------------------------------------------------------------------
def _front_mask(n: int, keep: int) -> torch.Tensor:
    mask = torch.zeros(n, dtype=torch.bool)
    mask[:keep] = True
    return mask


def _logits(out):
    # Same convention as engine.evaluation: the last element of a tuple.
    if isinstance(out, (tuple, list)):
        out = out[-1]
    return out


def _labels(samples) -> torch.Tensor:
    if isinstance(samples, torch.Tensor):
        return samples.reshape(-1)
    if isinstance(samples, (list, tuple)) and samples and \
            hasattr(samples[0], 'gt_label'):
        return torch.cat([s.gt_label.reshape(-1) for s in samples])
    raise ValueError('AutoSlim: cannot read labels from data_samples of type '
                     f'{type(samples).__name__} (expected a tensor or data '
                     'samples with gt_label)')


def _unpack(data):
    if isinstance(data, dict):
        if 'inputs' not in data:
            raise KeyError(f'AutoSlim: a data batch needs "inputs", got keys '
                           f'{sorted(data)}')
        return data['inputs'], data.get('data_samples')
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return data[0], data[1]
    raise ValueError('AutoSlim: a data batch must be a dict with inputs / '
                     f'data_samples or an (inputs, labels) pair, got '
                     f'{type(data).__name__}')


@contextlib.contextmanager
def _bn_running_stats_frozen(model: nn.Module):
    """Train-mode BN normalises with batch statistics and leaves the running
    ones untouched (``track_running_stats=False`` for the duration)."""
    bns = [m for m in model.modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm)
           and m.track_running_stats]
    for m in bns:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in bns:
            m.track_running_stats = True


class _PlainClassifier(BaseModel):
    """mmengine face of a plain ``nn.Module`` classifier (torchvision, ...):
    ``mode='tensor'`` returns the logits, ``'loss'`` cross-entropy,
    ``'predict'`` the logits. Batches are ``(inputs, labels)`` or dicts with
    ``inputs`` / ``data_samples`` (labels)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs, data_samples=None, mode: str = 'tensor'):
        logits = self.model(inputs)
        if mode == 'loss':
            return {'loss': F.cross_entropy(_logits(logits),
                                            _labels(data_samples))}
        return logits


# -- the sandwich rule -------------------------------------------------------------
class SandwichRule:
    """Widths of one sandwich step and the in-place distillation loss.

    Args:
        pruner: The :class:`ChannelPruner` of the slimmable model.
        min_ratio: Smallest **keep** ratio of every space (note: a kept
            fraction, unlike ChannelPruner's ``ratio`` which is removed).
        num_random: Random widths per step besides the largest / smallest.
        width_step: Spacing of the keep-ratio grid ``min_ratio ... 1``.
        width_grid: Explicit keep ratios (overrides ``width_step``).
        random_mode: ``'space'`` draws one grid ratio per channel space
            (non-uniform widths, what the greedy search later explores);
            ``'uniform'`` one ratio for all spaces.
        temperature: Distillation temperature (the KL term is scaled by
            ``T**2`` so its gradient does not shrink with ``T``).
        distill_weight: Weight of the distillation losses.
        bn_stats: ``'largest'`` (only the full width updates BN running
            statistics) or ``'all'`` (every width does).
        seed: Width sampling seed; step ``i`` draws from ``seed`` and ``i``
            only, so a resumed run samples the same widths.
    """

    def __init__(self, pruner: ChannelPruner, min_ratio: float = 0.35,
                 num_random: int = 2, width_step: float = 0.05,
                 width_grid: Sequence[float] | None = None,
                 random_mode: str = 'space', temperature: float = 1.0,
                 distill_weight: float = 1.0, bn_stats: str = 'largest',
                 seed: int = 0):
        if isinstance(min_ratio, bool) or \
                not isinstance(min_ratio, (int, float)) or \
                not 0 < min_ratio <= 1:
            raise ValueError(f'min_ratio (smallest kept fraction) must be in '
                             f'(0, 1], got {min_ratio!r}')
        if int(num_random) < 0:
            raise ValueError(f'num_random must be >= 0, got {num_random}')
        if random_mode not in ('space', 'uniform'):
            raise ValueError(f"random_mode must be 'space' or 'uniform', got "
                             f'{random_mode!r}')
        if not temperature > 0:
            raise ValueError(f'temperature must be > 0, got {temperature!r}')
        if bn_stats not in ('largest', 'all'):
            raise ValueError(f"bn_stats must be 'largest' or 'all', got "
                             f'{bn_stats!r}')
        self.pruner = pruner
        self.min_ratio = float(min_ratio)
        self.num_random = int(num_random)
        if width_grid is None:
            grid = ratio_grid(self.min_ratio, 1.0, width_step) \
                if self.min_ratio < 1 else [1.0]
        else:
            grid = sorted(float(r) for r in width_grid)
            bad = [r for r in grid if not self.min_ratio <= r <= 1]
            if not grid or bad:
                raise ValueError(f'width_grid entries must lie in [min_ratio='
                                 f'{self.min_ratio}, 1], got {list(width_grid)}')
        self.grid = grid
        self.random_mode = random_mode
        self.temperature = float(temperature)
        self.distill_weight = float(distill_weight)
        self.bn_stats = bn_stats
        self.seed = int(seed)
        self.min_subnet = self.front_subnet(self.min_ratio)

    def front_subnet(self, keep: float | Mapping[str, float]
                     ) -> dict[str, torch.Tensor]:
        """Subnet keeping the first ``keep`` fraction of each space (one
        float, or ``{space: keep}``), rounded by the pruner's ``divisor`` /
        ``min_channels``."""
        spaces = self.pruner.channel_spaces
        if not isinstance(keep, Mapping):
            keep = {n: keep for n in spaces}
        # scores=None: the pruner keeps the first channels of each space.
        return self.pruner.sample_subnet_nonuni(
            {n: max(0.0, 1.0 - float(k)) for n, k in keep.items()}, None)

    def widths(self, step: int) -> list[tuple[str, dict | None]]:
        """``[(name, subnet or None for the full width), ...]`` of step
        ``step``: max, min, rand0, rand1, ..."""
        rng = random.Random(self.seed * 1_000_003 + int(step))
        res: list[tuple[str, dict | None]] = [('max', None),
                                              ('min', self.min_subnet)]
        names = list(self.pruner.channel_spaces)
        for i in range(self.num_random):
            if self.random_mode == 'uniform':
                keep = rng.choice(self.grid)
            else:
                keep = {n: rng.choice(self.grid) for n in names}
            res.append((f'rand{i}', self.front_subnet(keep)))
        return res

    def distill_loss(self, student: torch.Tensor, teacher: torch.Tensor
                     ) -> torch.Tensor:
        """KL(teacher || student) of temperature-softened distributions."""
        t = self.temperature
        return F.kl_div(F.log_softmax(student.float() / t, dim=-1),
                        F.softmax(teacher.detach().float() / t, dim=-1),
                        reduction='batchmean') * (t * t)

    def run(self, model: nn.Module, forward: Callable[[], torch.Tensor],
            gt_loss: Callable[[torch.Tensor], torch.Tensor],
            backward: Callable[[torch.Tensor, bool], None], step: int,
            no_sync: Callable | None = None) -> OrderedDict:
        """One sandwich step.

        Args:
            model: The masked model (for the BN statistics policy).
            forward: Logits of the current masks.
            gt_loss: Ground-truth loss of the largest width's logits.
            backward: ``backward(loss, last)``; ``last`` is True for the
                final width (take the optimizer step there).
            step: Step index (seeds the random widths).
            no_sync: DDP's ``no_sync``: gradients of all but the last width
                are accumulated locally and reduced once.

        Returns:
            ``{'loss_max': ..., 'loss_min': ..., 'loss_rand0': ...}``
            (detached).
        """
        widths = self.widths(step)
        losses: OrderedDict = OrderedDict()
        teacher = None
        try:
            for i, (name, subnet) in enumerate(widths):
                last = i == len(widths) - 1
                if subnet is None:
                    self.pruner.clear_subnet()
                else:
                    self.pruner.set_subnet(subnet)
                with contextlib.ExitStack() as stack:
                    if teacher is not None and self.bn_stats == 'largest':
                        stack.enter_context(_bn_running_stats_frozen(model))
                    if no_sync is not None and not last:
                        stack.enter_context(no_sync())
                    logits = forward()
                    if teacher is None:
                        loss = gt_loss(logits)
                        teacher = logits.detach()
                    else:
                        loss = self.distill_weight * self.distill_loss(
                            logits, teacher)
                    backward(loss, last)
                losses[f'loss_{name}'] = loss.detach()
        finally:
            # the dense model between steps: validation sees the full width
            self.pruner.clear_subnet()
        return losses


# -- the algorithm ------------------------------------------------------------------
@MODELS.register_module()
class AutoSlim(ArchitectureAlgorithm):
    """Slimmable training with the sandwich rule and in-place distillation.

    Args:
        architecture: Model config or module. A plain ``nn.Module`` (e.g. a
            torchvision classifier) is wrapped so that it takes
            ``(inputs, labels)`` batches.
        input_shape: Example input shape for tracing.
        min_ratio: Smallest kept fraction of every channel space.
        num_random: Random widths per step (the paper uses 2).
        width_step: Spacing of the random keep-ratio grid.
        width_grid: Explicit keep-ratio grid (overrides ``width_step``).
        random_mode: ``'space'`` (a ratio per space) or ``'uniform'``.
        temperature: In-place distillation temperature.
        distill_weight: Weight of the distillation losses.
        bn_stats: ``'largest'`` (default) or ``'all'``, see
            :class:`SandwichRule`.
        pruner: Extra :class:`ChannelPruner` arguments (``divisor``,
            ``min_channels``, ``ignore_layers``, ``leaf_modules``), or a
            ChannelPruner already built on ``architecture``.
        init_checkpoint: Weights to start from: a checkpoint of the
            architecture (e.g. a trained baseline) or of an ``AutoSlim``
            model (``architecture.`` keys), loaded with the safe loader.
        seed: Width sampling seed.
        data_preprocessor: Given to the architecture when its config has
            none.
        init_cfg: mmengine init config.
    """

    def __init__(self, architecture: dict | nn.Module,
                 input_shape: Iterable[int] = (1, 3, 32, 32),
                 min_ratio: float = 0.35, num_random: int = 2,
                 width_step: float = 0.05,
                 width_grid: Sequence[float] | None = None,
                 random_mode: str = 'space', temperature: float = 1.0,
                 distill_weight: float = 1.0, bn_stats: str = 'largest',
                 pruner: dict | ChannelPruner | None = None,
                 init_checkpoint: str | None = None, seed: int = 0,
                 data_preprocessor: dict | None = None,
                 init_cfg: dict | None = None):
        if isinstance(architecture, nn.Module) and \
                not isinstance(architecture, BaseModel):
            architecture = _PlainClassifier(architecture)
        super().__init__(architecture, None, data_preprocessor, init_cfg)
        self.init_checkpoint = init_checkpoint
        if init_checkpoint:
            self.load_weights(init_checkpoint)
        self.example_inputs = torch.randn(*tuple(input_shape))
        if isinstance(pruner, ChannelPruner):
            # e.g. sandwich_train(pruner, ...): share the caller's spaces
            if pruner.model is not self.architecture and pruner.model is not \
                    getattr(self.architecture, 'model', None):
                raise ValueError('pruner: a ChannelPruner given to AutoSlim '
                                 'must be built on its architecture')
            self.pruner = pruner
        else:
            self.pruner = ChannelPruner(self.architecture,
                                        self.example_inputs,
                                        **(pruner or {}))
        self.sandwich = SandwichRule(
            self.pruner, min_ratio=min_ratio, num_random=num_random,
            width_step=width_step, width_grid=width_grid,
            random_mode=random_mode, temperature=temperature,
            distill_weight=distill_weight, bn_stats=bn_stats, seed=seed)
        self._steps = 0  # fallback step counter outside the Runner

    @property
    def min_ratio(self) -> float:
        return self.sandwich.min_ratio

    def forward(self, inputs, data_samples=None, mode: str = 'tensor'):
        if mode == 'loss':
            # Only reached when a wrapper bypasses train_step (plain DDP):
            # that would silently train the full width alone.
            raise RuntimeError(
                "AutoSlim trains through train_step (sandwich rule), not "
                "forward(mode='loss'); for distributed training set "
                "model_wrapper_cfg=dict(type='mmrazor_ext.AutoSlimDDP')")
        return super().forward(inputs, data_samples, mode)

    def load_weights(self, path: str) -> None:
        """Load architecture or AutoSlim weights (safe loader)."""
        state = safe_load(path)
        state = state.get('state_dict', state)
        if any(k.startswith('architecture.') for k in state):
            state = {k[len('architecture.'):]: v for k, v in state.items()
                     if k.startswith('architecture.')}
        self.architecture.load_state_dict(state)
        print_log(f'loaded {path}', logger='current')

    def gt_loss(self, logits: torch.Tensor, data_samples) -> torch.Tensor:
        """Ground-truth loss of the largest width: the architecture head's
        own loss when it has one (mmpretrain ``ClsHead``: label smoothing,
        soft labels...), else cross-entropy."""
        head = getattr(self.architecture, 'head', None)
        if head is not None and hasattr(head, '_get_loss') and \
                isinstance(data_samples, (list, tuple)) and data_samples \
                and hasattr(data_samples[0], 'gt_label'):
            losses = head._get_loss(logits, data_samples)
            return sum(v for k, v in losses.items() if 'loss' in k)
        labels = _labels(data_samples).to(logits.device)
        return F.cross_entropy(logits, labels)

    def _step_index(self) -> int:
        # The Runner's iteration while it trains: resumed runs draw the same
        # widths as uninterrupted ones with no extra checkpoint state.
        # Elsewhere (sandwich_train) a counter of this object.
        from mmengine.logging import MessageHub
        hub = MessageHub.get_current_instance()
        self._steps += 1
        if hub.get_info('loop_stage') == 'train' and \
                hub.get_info('iter') is not None:
            return int(hub.get_info('iter'))
        return self._steps - 1

    def train_step(self, data, optim_wrapper: OptimWrapper) -> OrderedDict:
        """Largest + smallest + random widths, one optimizer step.

        Returns:
            ``loss`` (the sum, for the log) and ``loss_max``, ``loss_min``,
            ``loss_rand0`` ...
        """
        return self._sandwich_step(data, optim_wrapper, self, None)

    def _sandwich_step(self, data, optim_wrapper, net, no_sync):
        with optim_wrapper.optim_context(self):
            data = self.data_preprocessor(data, True)
        inputs, samples = _unpack(data)

        def forward():
            with optim_wrapper.optim_context(self):
                return _logits(net(inputs, samples, mode='tensor'))

        def gt_loss(logits):
            with optim_wrapper.optim_context(self):
                return self.gt_loss(logits, samples)

        def backward(loss, last):
            if last:
                optim_wrapper.update_params(loss)
            else:
                # Accumulate this width's gradients now (its graph is freed)
                # instead of summing four graphs; one optimizer step per
                # train step, so the inner counter counts steps, not widths.
                optim_wrapper.backward(optim_wrapper.scale_loss(loss))
                optim_wrapper._inner_count -= 1

        losses = self.sandwich.run(self.architecture, forward, gt_loss,
                                   backward, self._step_index(), no_sync)
        log_vars = OrderedDict(loss=sum(losses.values()))
        log_vars.update(losses)
        return log_vars


@MODEL_WRAPPERS.register_module()
class AutoSlimDDP(MMDistributedDataParallel):
    """DDP wrapper for :class:`AutoSlim`
    (``model_wrapper_cfg=dict(type='mmrazor_ext.AutoSlimDDP')``): forwards
    go through DDP, the first widths run under ``no_sync`` and the
    gradients of all widths are all-reduced once per step."""

    def train_step(self, data, optim_wrapper: OptimWrapper) -> OrderedDict:
        return self.module._sandwich_step(data, optim_wrapper, self,
                                          self.no_sync)


def sandwich_train(model: nn.Module, loader: Iterable, epochs: int = 1, *,
                   input_shape: Sequence[int] | None = None,
                   optimizer: torch.optim.Optimizer | None = None,
                   lr: float = 0.05, momentum: float = 0.9,
                   weight_decay: float = 5e-4, max_iters: int | None = None,
                   log_interval: int = 50, **autoslim_kwargs) -> dict:
    """Slimmable training without the Runner (benchmarks, notebooks).

    Args:
        model: A plain classifier (trained in place), an mmengine model, an
            :class:`AutoSlim`, or a :class:`ChannelPruner` of the model (its
            spaces, divisor and min_channels define the widths).
        loader: Batches: ``(inputs, labels)`` or mmengine data batches.
        epochs: Passes over ``loader``.
        input_shape: Example input shape for tracing (default: the first
            batch's sample shape).
        optimizer: Default: SGD (``lr``, ``momentum``, nesterov,
            ``weight_decay``) with a cosine schedule over all steps.
        max_iters: Stop after this many steps.
        log_interval: Steps between log lines.
        **autoslim_kwargs: :class:`AutoSlim` arguments (``min_ratio``,
            ``num_random``, ``temperature``, ``pruner`` ...).

    Returns:
        ``{'algorithm': AutoSlim, 'pruner': ChannelPruner (of the algorithm's
        architecture), 'history': [{loss_max, loss_min, ...} per step],
        'time_s': float}``.
    """
    if isinstance(model, AutoSlim):
        algo = model
    elif isinstance(model, ChannelPruner):
        pruner = model
        shape = pruner.example_inputs[0].shape
        algo = AutoSlim(pruner.model, input_shape=shape, pruner=pruner,
                        **autoslim_kwargs)
    else:
        if input_shape is None:
            first = next(iter(loader))
            x, _ = _unpack(first)
            if isinstance(x, (list, tuple)):  # mmengine batch before collation
                x = torch.stack(list(x[:1]))
            input_shape = (1, *x.shape[1:])
        algo = AutoSlim(model, input_shape=input_shape, **autoslim_kwargs)
    try:
        steps_per_epoch = len(loader)
    except TypeError:
        steps_per_epoch = max_iters or 1
    total = epochs * steps_per_epoch
    if max_iters is not None:
        total = min(total, int(max_iters))
    scheduler = None
    if optimizer is None:
        optimizer = torch.optim.SGD(algo.parameters(), lr=lr,
                                    momentum=momentum, nesterov=momentum > 0,
                                    weight_decay=weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, max(total, 1))
    wrapper = OptimWrapper(optimizer)
    algo.train()
    history = []
    t0 = time.perf_counter()
    step = 0
    for _ in range(epochs):
        for batch in loader:
            if step >= total:
                break
            log = algo.train_step(batch, wrapper)
            if scheduler is not None:
                scheduler.step()
            history.append({k: float(v) for k, v in log.items()})
            step += 1
            if log_interval and step % log_interval == 0:
                print_log(f'sandwich step {step}/{total}: ' + ', '.join(
                    f'{k} {float(v):.4f}' for k, v in log.items()),
                    logger='current')
    algo.eval()
    return {'algorithm': algo, 'pruner': algo.pruner, 'history': history,
            'time_s': time.perf_counter() - t0}


# -- greedy slimming -----------------------------------------------------------------
def plot_trajectory(trajectory: Sequence[Mapping], path: str,
                    targets: Sequence[float] = (), title: str = 'AutoSlim'
                    ) -> str:
    """Accuracy vs FLOPs fraction along a greedy trajectory (PNG)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    path_pts = [e for e in trajectory if e['kind'] in ('start', 'greedy')]
    hits = [e for e in trajectory if e.get('target') is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([e['flops_ratio'] for e in path_pts],
            [e['top1'] for e in path_pts], '-o', ms=3, c='tab:blue',
            label='greedy slimming')
    if hits:
        ax.scatter([e['flops_ratio'] for e in hits],
                   [e['top1'] for e in hits], marker='*', s=120,
                   c='tab:red', zorder=3, label='subnet per target')
    for t in targets:
        ax.axvline(t, ls='--', c='k', lw=0.8)
    ax.invert_xaxis()
    ax.set_xlabel('FLOPs fraction of the full width')
    ax.set_ylabel('held-out top-1 (%) after adaptive BN')
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc='lower left', fontsize=8)
    fig.tight_layout()

    def save(p):
        fig.savefig(p, dpi=120, format='png')
    try:
        atomic_write(path, save)
    finally:
        plt.close(fig)
    return path


def _check_targets(targets) -> list[float]:
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
        min_ratio: Smallest kept fraction of a space (use the supernet's
            training ``min_ratio``: narrower widths were never trained).
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
    """

    def __init__(self, pruner: ChannelPruner, evaluator,
                 target_flops_ratios: Sequence[float] | float = (0.5,),
                 step: int | float = 0.1, min_ratio: float | None = None,
                 tolerance: float = 0.02, work_dir: str | None = None,
                 resume: bool = True, save_weights: bool = False,
                 max_steps: int | None = None, prefix: str = 'subnet_flops'):
        self.pruner = pruner
        self.evaluator = evaluator
        self.targets = _check_targets(target_flops_ratios)
        if isinstance(step, bool) or not isinstance(step, (int, float)) or \
                step <= 0 or (step >= 1 and float(step) != int(step)):
            raise ValueError(f'step must be a channel count >= 1 or a '
                             f'fraction in (0, 1), got {step!r}')
        self.step = int(step) if step >= 1 else float(step)
        if min_ratio is not None and not 0 < min_ratio <= 1:
            raise ValueError(f'min_ratio must be in (0, 1], got '
                             f'{min_ratio!r}')
        self.min_ratio = None if min_ratio is None else float(min_ratio)
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
        space = self.pruner.channel_spaces[name]
        div = max(1, self.pruner.divisor // max(1, space.unit_size))
        return div if space.num_channels >= div else 1

    def _floors(self) -> dict[str, int]:
        # The pruner's own rounding (divisor, min_channels): with min_ratio
        # this is exactly the supernet's smallest trained width.
        keep = 0.0 if self.min_ratio is None else self.min_ratio
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
                'min_ratio': self.min_ratio, 'tolerance': self.tolerance,
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

        def write(p):
            with open(p, 'w') as f:
                json.dump(data, f, indent=1)
        atomic_write(path, write)

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
            previous = pruner.subnet
            model = pruner.model
            saved = bn_state(model)
            try:
                pruner.set_subnet(self.subnet(kept))
                cache = getattr(self.evaluator, 'bn_cache', None)
                if self.save_weights and cache:
                    recalibrate_bn(model, cache, len(cache),
                                   forward=getattr(self.evaluator, 'forward',
                                                   None))
                pruner.save_subnet(path, weights=self.save_weights)
            finally:
                load_bn_state(model, saved)
                if previous is None:
                    pruner.clear_subnet()
                else:
                    pruner.set_subnet(previous)
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
                f'width (min_ratio={self.min_ratio})')
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


@LOOPS.register_module()
class AutoSlimSearchLoop(BaseLoop):
    """Greedy slimming of a trained :class:`AutoSlim` model as the Runner's
    train loop (``train_cfg=dict(type='AutoSlimSearchLoop', ...)``, run by
    ``tools/train.py``; the supernet comes from ``model.init_checkpoint``).

    Besides the :class:`GreedySlimmer` outputs, ``supernet.pth`` (the
    architecture's weights, plain keys) is written to the work dir for the
    subnet-training config to slice from.

    Data: BN recalibration batches are the first ``bn_batches`` of the
    training set in a fixed shuffled order with the *test* pipeline, so a
    restarted search sees the same numbers. The held-out set is the val set
    (``heldout='val'``, first ``heldout_batches`` batches, None = all) or
    ``heldout='train'``: the next ``heldout_batches`` training batches after
    the BN batches in that order (disjoint from them).

    Args:
        runner: The Runner.
        dataloader: The Runner's train dataloader (unused: the search builds
            its own deterministic loaders from the config).
        target_flops_ratios: FLOPs fractions to reach.
        step: Channels (int) or fraction (float) per greedy step.
        min_ratio: Smallest kept fraction (default: the model's
            ``min_ratio``).
        tolerance: Relative distance below a target that counts as a hit.
        bn_batches: Batches for adaptive BN (K).
        heldout: ``'val'`` or ``'train'``.
        heldout_batches: Held-out batches (None: the whole val set).
        batch_size: Batch size of the search loaders (default: the train
            loader's).
        save_weights: Save sliced weights (BN recalibrated) next to each
            subnet JSON.
        resume: Continue from ``work_dir/autoslim_search.json``.
        max_steps: Greedy steps in this run (None: until done).
        seed: Seed of the fixed training-set order.
    """

    def __init__(self, runner, dataloader,
                 target_flops_ratios: Sequence[float] = (0.5,),
                 step: int | float = 0.1, min_ratio: float | None = None,
                 tolerance: float = 0.02, bn_batches: int = 10,
                 heldout: str = 'val', heldout_batches: int | None = 10,
                 batch_size: int | None = None, save_weights: bool = True,
                 resume: bool = True, max_steps: int | None = None,
                 seed: int = 0):
        super().__init__(runner, dataloader)
        if heldout not in ('val', 'train'):
            raise ValueError(f"heldout must be 'val' or 'train', got "
                             f'{heldout!r}')
        if heldout == 'train' and not heldout_batches:
            raise ValueError("heldout='train' needs heldout_batches")
        self.targets = _check_targets(target_flops_ratios)
        self.step = step
        self.min_ratio = min_ratio
        self.tolerance = tolerance
        self.bn_batches = int(bn_batches)
        self.heldout = heldout
        self.heldout_batches = heldout_batches
        self.batch_size = batch_size
        self.save_weights = save_weights
        self.resume = resume
        self.max_steps = max_steps
        self.seed = int(seed)
        self.results: list[dict] = []

    # The Runner reads these before and after running the loop.
    @property
    def max_epochs(self) -> int:
        return 1

    @property
    def max_iters(self) -> int:
        return 1

    @property
    def epoch(self) -> int:
        return 0

    @property
    def iter(self) -> int:
        return 0

    def _loader(self, split: str):
        cfg = self.runner.cfg
        loader = copy.deepcopy(cfg[f'{split}_dataloader'])
        loader.update(num_workers=0, persistent_workers=False)
        loader['sampler'] = dict(type='DefaultSampler',
                                 shuffle=split == 'train', seed=self.seed)
        if self.batch_size:
            loader['batch_size'] = int(self.batch_size)
        if split == 'train':
            test_pipeline = cfg.get('val_dataloader', {}).get(
                'dataset', {}).get('pipeline')
            if test_pipeline is not None and 'pipeline' in loader['dataset']:
                loader['dataset']['pipeline'] = copy.deepcopy(test_pipeline)
        return self.runner.build_dataloader(loader, seed=self.seed)

    def _save_supernet(self, model) -> None:
        # The architecture's own weights (no ``architecture.`` prefix) next
        # to the subnets: what a subnet-training config slices from.
        path = osp.join(self.runner.work_dir, 'supernet.pth')
        if not is_main_process():
            return
        state = {k: v.detach().cpu()
                 for k, v in model.architecture.state_dict().items()}
        atomic_write(path, lambda p: torch.save({'state_dict': state}, p))

    def run(self):
        runner = self.runner
        runner.call_hook('before_train')
        from mmrazor_ext.search import AdaptiveBNEvaluator
        model = runner.model.module if is_model_wrapper(runner.model) \
            else runner.model
        pruner = getattr(model, 'pruner', None)
        if pruner is None:
            raise ValueError('AutoSlimSearchLoop: the model must be an '
                             f'AutoSlim (with a pruner), got '
                             f'{type(model).__name__}')
        model.eval()
        train = self._loader('train')
        n_held = self.heldout_batches
        if self.heldout == 'train':
            bn = list(itertools.islice(iter(train), self.bn_batches + n_held))
            held = bn[self.bn_batches:]
            bn = bn[:self.bn_batches]
        else:
            bn = list(itertools.islice(iter(train), self.bn_batches))
            held = itertools.islice(iter(self._loader('val')), n_held)
        evaluator = AdaptiveBNEvaluator(pruner, bn, held,
                                        bn_batches=self.bn_batches)
        print_log(f'autoslim search: {len(pruner.channel_spaces)} spaces, '
                  f'{len(evaluator.bn_cache)} BN batches, '
                  f'{len(evaluator.val_cache)} held-out batches '
                  f'({self.heldout}), targets {self.targets}',
                  logger='current')
        min_ratio = self.min_ratio if self.min_ratio is not None else \
            getattr(model, 'min_ratio', None)
        self._save_supernet(model)
        self.results = greedy_slim(
            pruner, evaluator, self.targets, self.step, min_ratio=min_ratio,
            tolerance=self.tolerance, work_dir=runner.work_dir,
            resume=self.resume, save_weights=self.save_weights,
            max_steps=self.max_steps)
        runner.call_hook('after_train')
        return runner.model
