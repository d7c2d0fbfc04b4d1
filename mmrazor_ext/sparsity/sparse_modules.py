"""Attach fake-sparse nodes to conv / linear layers in place.

A prepared layer keeps its class (a dynamic subclass is swapped in), its
``weight`` Parameter (still ``state_dict`` key ``<name>.weight``, so dense
checkpoints load and optimizers / DDP keep their references) and gains the
submodule ``weight_fake_sparse`` whose ``mask`` buffer is saved as
``<name>.weight_fake_sparse.mask``. Reading ``layer.weight`` returns the
masked weight, so any ``forward`` (including subclasses with their own
``forward``) computes with it; the dense tensor is ``dense_weight(layer)``.
"""
from collections.abc import Iterator

import torch
from torch import nn

SPARSIFIABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)

_SPARSE_CLASSES: dict[type, type] = {}


def _masked_weight(self):
    return self.weight_fake_sparse(self._parameters['weight'])


def _sparse_class(cls: type) -> type:
    """The cached ``Sparse<cls>`` subclass whose ``weight`` is masked."""
    if cls not in _SPARSE_CLASSES:
        name = f'Sparse{cls.__name__}'
        while name in globals():  # same class name from another package
            name += '_'
        new = type(name, (cls,),
                   {'weight': property(_masked_weight), '_is_sparse_layer': True,
                    '_dense_class': cls, '__module__': __name__,
                    '__qualname__': name})
        # A module-level name lets pickle (torch.save of a whole model) find it.
        globals()[name] = new
        _SPARSE_CLASSES[cls] = new
    return _SPARSE_CLASSES[cls]


def is_sparse_layer(module: nn.Module) -> bool:
    """Whether ``module`` carries a fake-sparse node."""
    return getattr(type(module), '_is_sparse_layer', False)


def dense_weight(module: nn.Module) -> torch.Tensor:
    """The stored (unmasked) weight Parameter of a layer."""
    return module._parameters['weight']


def attach_fake_sparse(module: nn.Module, fake_sparse: nn.Module) -> None:
    """Make ``module`` compute with ``fake_sparse(weight)``."""
    if is_sparse_layer(module):
        raise ValueError(f'{type(module).__name__} already has a fake-sparse node')
    if not isinstance(module, SPARSIFIABLE):
        raise TypeError(f'cannot sparsify {type(module).__name__}')
    module.add_module('weight_fake_sparse', fake_sparse)
    module.__class__ = _sparse_class(type(module))


def detach_fake_sparse(module: nn.Module, bake: bool = True) -> None:
    """Remove the fake-sparse node; with ``bake`` the mask is written into the
    weight first so the plain layer computes the same output."""
    if not is_sparse_layer(module):
        return
    if bake:
        with torch.no_grad():
            dense_weight(module).copy_(module.weight.detach())
    module.__class__ = type(module)._dense_class
    del module._modules['weight_fake_sparse']


def iter_sparse_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(qualified name, layer)`` for every prepared layer of ``model``."""
    for name, m in model.named_modules():
        if is_sparse_layer(m):
            yield name, m


def strip_fake_sparse(model: nn.Module, bake: bool = True) -> nn.Module:
    """Detach every fake-sparse node of ``model`` (in place) and return it."""
    for _, m in list(iter_sparse_layers(model)):
        detach_fake_sparse(m, bake=bake)
    return model


def __getattr__(name: str):
    # Lets pickle (torch.save of a whole model) find ``SparseConv2d`` & co.
    # in a fresh process, where no layer has been prepared yet.
    for cls in SPARSIFIABLE:
        if name == f'Sparse{cls.__name__}':
            return _sparse_class(cls)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
