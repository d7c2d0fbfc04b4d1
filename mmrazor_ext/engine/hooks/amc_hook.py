"""AMCPruningHook: runs :class:`~mmrazor_ext.algorithms.AMCPruning`."""
from __future__ import annotations

from mmrazor_ext.registry import HOOKS
from mmrazor_ext.utils.model import unwrap_model

from .pruning_hook import PruningHook

__all__ = ['AMCPruningHook']


@HOOKS.register_module()
class AMCPruningHook(PruningHook):
    """:class:`PruningHook` that gives :class:`AMCPruning` the work dir
    (search outputs, reuse of a finished search) and the validation loader
    (``reward_data='val'``) before pruning."""

    def before_train(self, runner) -> None:
        algo = unwrap_model(runner.model)
        algo.work_dir = runner.work_dir
        algo.val_loader = runner.val_dataloader
        super().before_train(runner)
