"""Fake-sparse modules: map a dense weight to the weight used in forward.

Each instance belongs to one layer (it is attached as the submodule
``weight_fake_sparse`` of that layer, see :mod:`.sparse_modules`) and keeps a
``mask`` buffer of the weight's shape, so masks travel with ``state_dict``.
"""
import torch
from torch import nn

from mmrazor_ext.registry import FAKE_SPARSES

from .config import Arg, check_positive

_EPS = 1e-6


@FAKE_SPARSES.register_module()
class FakeSparse(nn.Module):
    """Magnitude-style masking: ``W_eff = W * mask``.

    Args:
        weight: The layer's dense weight (only its shape/dtype/device are
            used; the mask starts all ones, i.e. dense).
    """

    ARGS = {}
    #: scheduler class names that can drive this module (None: any).
    scheduler_types: tuple[str, ...] | None = None

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        # bool: a quarter of the checkpoint size of a float mask.
        self.register_buffer(
            'mask', torch.ones_like(weight.detach(), dtype=torch.bool))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask

    @torch.no_grad()
    def set_mask(self, mask: torch.Tensor) -> None:
        """Replace the mask (any dtype; non-zero means kept)."""
        self.mask.copy_(mask != 0)

    @torch.no_grad()
    def effective_mask(self, weight: torch.Tensor) -> torch.Tensor:
        """Boolean tensor: which weights are non-zero after masking."""
        return self.forward(weight) != 0


@FAKE_SPARSES.register_module()
class STRFakeSparse(FakeSparse):
    """Soft Threshold Reparameterization (Kusupati et al., 2020).

    ``W_eff = sign(W) * ReLU(|W| - sigmoid(s))`` with one learnable threshold
    logit ``s`` per layer; weight decay on ``s`` raises the threshold and so
    the sparsity during training. ``mask`` mirrors ``W_eff != 0`` (kept up to
    date by :class:`STRMaskGenerator`) for reporting only.

    Args:
        weight: The layer's dense weight.
        sInit_value: Initial value of ``s`` (-5 gives sigmoid(s) = 0.0067).
    """

    ARGS = {'sInit_value': Arg((int, float), -5.0,
                               doc='initial threshold logit s')}

    def __init__(self, weight: torch.Tensor, sInit_value: float = -5.0):  # noqa: N803
        super().__init__(weight)
        self.s = nn.Parameter(
            torch.full((1,), float(sInit_value), dtype=weight.dtype,
                       device=weight.device))

    def threshold(self) -> torch.Tensor:
        return torch.sigmoid(self.s)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return torch.sign(weight) * torch.relu(weight.abs() - self.threshold())


@FAKE_SPARSES.register_module()
class ProbMaskFakeSparse(FakeSparse):
    """Probabilistic masking (ProbMask, Zhou et al., 2021).

    Every weight has a keep probability ``scores`` in [0, 1]. In training the
    mask is a relaxed Bernoulli sample with temperature ``temperature`` (so
    gradients reach the scores); in eval the hard ``mask`` buffer (the
    globally top-scored weights, set by the scheduler) is used.

    Args:
        weight: The layer's dense weight.
        init_prob: Initial keep probability of every weight.
    """

    ARGS = {'init_prob': Arg((float,), 1.0, check_positive,
                             'initial keep probability')}
    # Its hard mask and temperature are set by ProbMaskScheduler only.
    scheduler_types = ('ProbMaskScheduler',)

    def __init__(self, weight: torch.Tensor, init_prob: float = 1.0):
        super().__init__(weight)
        self.scores = nn.Parameter(
            torch.full_like(weight.detach(), float(min(init_prob, 1.0))))
        self.register_buffer('temperature', torch.ones((), dtype=weight.dtype,
                                                       device=weight.device))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return weight * self.mask
        p = self.scores.clamp(_EPS, 1 - _EPS)
        u = torch.rand_like(p).clamp(_EPS, 1 - _EPS)
        logits = (p.log() - (1 - p).log() + u.log() - (1 - u).log())
        return weight * torch.sigmoid(logits / self.temperature)

    @torch.no_grad()
    def effective_mask(self, weight: torch.Tensor) -> torch.Tensor:
        # The deployable mask is the hard one, whatever the mode.
        return (weight * self.mask) != 0
