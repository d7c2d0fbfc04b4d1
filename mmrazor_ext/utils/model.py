"""Small helpers on models shared by every layer of the package."""
from __future__ import annotations

from torch import nn


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside a DDP / mmengine wrapper, or ``model`` itself."""
    from mmengine.model import is_model_wrapper
    return model.module if is_model_wrapper(model) else model
