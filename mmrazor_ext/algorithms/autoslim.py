"""AutoSlim (Yu & Huang, 2019): slimmable training with the sandwich rule.

Training (:class:`AutoSlim`, or :func:`sandwich_train` without the Runner)
runs the shared weights in masked mode with the *sandwich rule*
(:class:`~mmrazor_ext.algorithms.autoslim_sandwich.SandwichRule`): every
step forwards the largest width, the smallest (``min_keep_ratio`` of every
channel space kept) and ``num_random`` random widths, accumulates their
gradients and takes one optimizer step. The largest width learns from the
labels; the others learn from its detached logits (in-place distillation).

BatchNorm: only the largest width updates the running statistics (the
others normalise with their batch statistics and leave the running ones
alone), and the masks are cleared at the end of every step. Validation
during training therefore measures the full width exactly; a narrower
subnet is scored after adaptive BN (its statistics re-estimated on a few
training batches, as the search does).

Search: greedy slimming of the trained supernet is
:func:`mmrazor_ext.search.greedy.greedy_slim`, run from a config by
:class:`mmrazor_ext.engine.loops.AutoSlimSearchLoop`.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from mmengine.model import BaseModel, MMDistributedDataParallel
from mmengine.optim import OptimWrapper
from torch import nn

from mmrazor_ext.algorithms.base import ArchitectureAlgorithm
from mmrazor_ext.engine.checkpoint import safe_load
from mmrazor_ext.pruners import ChannelPruner
from mmrazor_ext.registry import MODEL_WRAPPERS, MODELS
from mmrazor_ext.search.space import renamed_kwarg

from .autoslim_sandwich import SandwichRule

__all__ = ['AutoSlim', 'AutoSlimDDP', 'sandwich_train']


# -- batches ------------------------------------------------------------------------
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


# -- the algorithm ------------------------------------------------------------------
@MODELS.register_module()
class AutoSlim(ArchitectureAlgorithm):
    """Slimmable training with the sandwich rule and in-place distillation.

    Args:
        architecture: Model config or module. A plain ``nn.Module`` (e.g. a
            torchvision classifier) is wrapped so that it takes
            ``(inputs, labels)`` batches.
        input_shape: Example input shape for tracing.
        min_keep_ratio: Smallest kept fraction of every channel space
            (default 0.35).
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
        min_ratio: Deprecated name of ``min_keep_ratio``.
    """

    def __init__(self, architecture: dict | nn.Module,
                 input_shape: Iterable[int] = (1, 3, 32, 32),
                 min_keep_ratio: float | None = None, num_random: int = 2,
                 width_step: float = 0.05,
                 width_grid: Sequence[float] | None = None,
                 random_mode: str = 'space', temperature: float = 1.0,
                 distill_weight: float = 1.0, bn_stats: str = 'largest',
                 pruner: dict | ChannelPruner | None = None,
                 init_checkpoint: str | None = None, seed: int = 0,
                 data_preprocessor: dict | None = None,
                 init_cfg: dict | None = None,
                 min_ratio: float | None = None):
        min_keep_ratio = renamed_kwarg(min_keep_ratio, min_ratio,
                                       'min_keep_ratio', 'min_ratio',
                                       'AutoSlim')
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
            self.pruner, min_keep_ratio=min_keep_ratio, num_random=num_random,
            width_step=width_step, width_grid=width_grid,
            random_mode=random_mode, temperature=temperature,
            distill_weight=distill_weight, bn_stats=bn_stats, seed=seed)
        self._steps = 0  # fallback step counter outside the Runner

    @property
    def min_keep_ratio(self) -> float:
        """Smallest kept fraction of every space (the narrowest width)."""
        return self.sandwich.min_keep_ratio

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
        **autoslim_kwargs: :class:`AutoSlim` arguments (``min_keep_ratio``,
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
