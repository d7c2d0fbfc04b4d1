"""Base of the Runner train loops that run a search instead of epochs."""
from __future__ import annotations

from mmengine.runner import BaseLoop

__all__ = ['SearchLoop']


class SearchLoop(BaseLoop):
    """A train loop (``train_cfg``) whose one "epoch" is a whole search.

    The Runner and its hooks read ``epoch``, ``iter``, ``max_epochs`` and
    ``max_iters`` from the train loop (log lines, checkpoint meta) before and
    after :meth:`run`; a search reports one epoch, and as iterations what
    :attr:`_iter` / :attr:`max_iters` count (one of one unless a subclass
    counts trials).
    """

    _iter = 0

    @property
    def epoch(self) -> int:
        return 0

    @property
    def max_epochs(self) -> int:
        return 1

    @property
    def iter(self) -> int:
        return self._iter

    @property
    def max_iters(self) -> int:
        return 1
