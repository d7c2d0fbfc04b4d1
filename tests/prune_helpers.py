"""Helpers shared by the graph / pruner / layer-kind tests (not a test
module: pytest collects only ``test_*.py``). Imported as the top-level
``prune_helpers`` (pytest puts ``tests/`` on the path); ``tests.`` would
resolve to a site-packages package of that name."""
import torch
from torch import nn


def randomise(model, seed=0):
    """Non-trivial BN statistics / affine so that dropped channels matter."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + .5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - .5)
                m.running_mean.copy_(torch.rand(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g)
                                    + .5)
    model.eval()
    return model


def tree(path):
    """Every file below ``path`` with its size (to assert nothing was
    written)."""
    return sorted((str(p.relative_to(path)), p.stat().st_size)
                  for p in path.rglob('*') if p.is_file())
