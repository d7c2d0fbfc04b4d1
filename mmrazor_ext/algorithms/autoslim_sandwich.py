"""The sandwich rule of AutoSlim's slimmable training (Yu & Huang, 2019).

Every step forwards the largest width, the smallest (``min_keep_ratio`` of
every channel space) and ``num_random`` random widths through the shared
weights, accumulating their gradients for one optimizer step. The largest
width learns from the labels; the others from its detached logits
(in-place distillation, KL at a temperature). Widths always keep the
*first* channels of a space (the slimmable convention), so a narrower
subnet is a prefix of a wider one.
"""
from __future__ import annotations

import contextlib
import random
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mmrazor_ext.pruners import ChannelPruner
from mmrazor_ext.search import ratio_grid
from mmrazor_ext.search.evaluator import apply_subnet
from mmrazor_ext.search.space import renamed_kwarg

__all__ = ['SandwichRule']

_DEFAULT_MIN_KEEP_RATIO = 0.35


@contextlib.contextmanager
def _bn_running_stats_frozen(model: nn.Module) -> Iterator[None]:
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


class SandwichRule:
    """Widths of one sandwich step and the in-place distillation loss.

    Args:
        pruner: The :class:`ChannelPruner` of the slimmable model.
        min_keep_ratio: Smallest **kept** fraction of every space (unlike
            ChannelPruner's ``ratio``, which is removed). Default 0.35.
        num_random: Random widths per step besides the largest / smallest.
        width_step: Spacing of the keep-ratio grid ``min_keep_ratio ... 1``.
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
        min_ratio: Deprecated name of ``min_keep_ratio``.
    """

    def __init__(self, pruner: ChannelPruner,
                 min_keep_ratio: float | None = None, num_random: int = 2,
                 width_step: float = 0.05,
                 width_grid: Sequence[float] | None = None,
                 random_mode: str = 'space', temperature: float = 1.0,
                 distill_weight: float = 1.0, bn_stats: str = 'largest',
                 seed: int = 0, min_ratio: float | None = None):
        keep = renamed_kwarg(min_keep_ratio, min_ratio, 'min_keep_ratio',
                             'min_ratio', 'SandwichRule',
                             default=_DEFAULT_MIN_KEEP_RATIO)
        if isinstance(keep, bool) or not isinstance(keep, (int, float)) or \
                not 0 < keep <= 1:
            raise ValueError(f'min_keep_ratio (smallest kept fraction) must '
                             f'be in (0, 1], got {keep!r}')
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
        self.min_keep_ratio = float(keep)
        self.num_random = int(num_random)
        if width_grid is None:
            grid = ratio_grid(self.min_keep_ratio, 1.0, width_step) \
                if self.min_keep_ratio < 1 else [1.0]
        else:
            grid = sorted(float(r) for r in width_grid)
            bad = [r for r in grid if not self.min_keep_ratio <= r <= 1]
            if not grid or bad:
                raise ValueError(f'width_grid entries must lie in '
                                 f'[min_keep_ratio={self.min_keep_ratio}, 1]'
                                 f', got {list(width_grid)}')
        self.grid = grid
        self.random_mode = random_mode
        self.temperature = float(temperature)
        self.distill_weight = float(distill_weight)
        self.bn_stats = bn_stats
        self.seed = int(seed)
        self.min_subnet = self.front_subnet(self.min_keep_ratio)

    def front_subnet(self, keep: float | Mapping[str, float]
                     ) -> dict[str, torch.Tensor]:
        """Subnet keeping the first ``keep`` fraction of each space (one
        float, or ``{space: keep}``), rounded by the pruner's ``divisor`` /
        ``min_channels``."""
        spaces = self.pruner.channel_spaces
        if not isinstance(keep, Mapping):
            keep = {n: keep for n in spaces}
        # scores=None: the pruner keeps the first channels of each space;
        # its ratios are removed fractions.
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
                apply_subnet(self.pruner, subnet)
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
