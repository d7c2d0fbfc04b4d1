"""A table from ops (module classes, functions, method names) to handlers.

Channel rules (:mod:`.rules`), layer kinds (:mod:`.layer_kinds`) and MACs
counters (:mod:`mmrazor_ext.estimators.complexity`) are all keyed the same
way; this one class serves them all.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = ['OpTable']


class OpTable(dict):
    """``{op: handler}`` where an op is a module class, a function object or
    a tensor-method name (``'view'``).

    Module classes are looked up along the MRO, so a subclass inherits its
    base's handler unless it has its own.
    """

    def register(self, *ops: Any) -> Callable:
        """Decorator putting the decorated handler under every op given."""
        def deco(fn):
            for op in ops:
                self[op] = fn
            return fn
        return deco

    def lookup_module(self, m: nn.Module) -> Any:
        """Handler of the nearest class of ``m`` (MRO order) or ``None``."""
        for cls in type(m).__mro__:
            if cls in self:
                return self[cls]
        return None
