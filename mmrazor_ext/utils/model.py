"""Small helpers on models shared by every layer of the package."""
from __future__ import annotations

import torch
from torch import nn


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside a DDP / mmengine wrapper, or ``model`` itself."""
    from mmengine.model import is_model_wrapper
    return model.module if is_model_wrapper(model) else model


def perturb_parameters(model: nn.Module, scale: float = 0.05,
                       seed: int = 0) -> nn.Module:
    """Add Gaussian noise (``scale``, own generator) to every floating
    parameter of ``model`` in place and return it. A freshly built model's
    zero-initialised heads, unit layer scales and affines would make an
    exported-vs-masked comparison vacuous (hiera, MLP-Mixer and Sequencer
    output exact zeros at timm's init) or hide a wrongly sliced tensor."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                p.add_(torch.randn(p.shape, generator=gen).to(p) * scale)
    return model
