"""PruningHook: drives a pruning algorithm at the Runner's named points.

The algorithm is any :class:`~mmrazor_ext.algorithms.base.PruningAlgorithm`
(one-shot / iterative channel pruning, layer fusion, AMC); the hook only
uses that interface, so it imports nothing from ``algorithms/``.
"""
from __future__ import annotations

from mmengine.hooks import Hook
from mmengine.logging import print_log

from mmrazor_ext.registry import HOOKS
from mmrazor_ext.utils.evaluation import evaluate_top1, recalibrate_bn
from mmrazor_ext.utils.model import unwrap_model

__all__ = ['PruningHook']


@HOOKS.register_module()
class PruningHook(Hook):
    """Prune before training, step iterative pruning, export after training.

    Args:
        eval_batches: Validation batches for the before/after-pruning top-1
            in the report (None: the whole validation set).
        export: Write the pruned model and report at the end of training.
    """

    priority = 'ABOVE_NORMAL'

    def __init__(self, eval_batches: int | None = None, export: bool = True):
        self.eval_batches = eval_batches
        self.export = export

    def _val(self, runner, model):
        return evaluate_top1(model, runner.val_dataloader, self.eval_batches)

    def before_train(self, runner) -> None:
        algo = unwrap_model(runner.model)
        if algo.step > 0:
            print_log(f'resumed after pruning step {algo.step}: masks '
                      'restored from the checkpoint', logger='current')
            return
        cx = algo.complexity()
        algo.report = dict(
            metric=algo.metric['type'], target=algo.target,
            flops_before=cx['flops'], params_before=cx['params'],
            top1_before=self._val(runner, algo.architecture))
        self._prune(runner, algo, 1)

    def _prune(self, runner, algo, step):
        algo.prune(runner.train_dataloader, step)
        top1 = self._val(runner, algo.architecture)
        report = {f'top1_step{step}_pruned': top1}
        if algo.bn_recalib_batches:
            recalibrate_bn(algo.architecture, runner.train_dataloader,
                           algo.bn_recalib_batches)
            report[f'top1_step{step}_bn_recalibrated'] = self._val(
                runner, algo.architecture)
        algo.report.update(report)
        print_log(f'after pruning step {step}: {report}', logger='current')

    def after_train_epoch(self, runner) -> None:
        algo = unwrap_model(runner.model)
        if algo.interval is None or algo.step >= algo.num_steps:
            return
        if (runner.epoch + 1) % algo.interval == 0:
            self._prune(runner, algo, algo.step + 1)

    def after_train(self, runner) -> None:
        if not self.export or runner.rank != 0:
            return
        algo = unwrap_model(runner.model)
        algo.export(runner.work_dir, val_batches=runner.val_dataloader)
