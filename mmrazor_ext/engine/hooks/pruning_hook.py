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

__all__ = ['PruningHook', 'SubnetReconstructHook']


@HOOKS.register_module()
class PruningHook(Hook):
    """Prune before training, step iterative pruning, export after training.

    Each pruning step: :meth:`prune`, top-1 (``top1_step{k}_pruned``),
    reconstruction when the algorithm's ``reconstruct`` is set
    (``top1_step{k}_reconstructed``), BN recalibration
    (``top1_step{k}_bn_recalibrated``), then fine-tuning. On ``--resume``
    nothing is redone: masks and (refitted) weights come from the
    checkpoint.

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
        if runner.val_loop is None:  # e.g. detector configs: no top-1
            return None
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
        # what reconstruction reproduces: the model before this step
        reference = algo.reconstruction_reference()
        algo.prune(runner.train_dataloader, step)
        top1 = self._val(runner, algo.architecture)
        report = {f'top1_step{step}_pruned': top1}
        if algo.reconstruct_cfg is not None and algo.reconstruct_pruned(
                runner.train_dataloader, reference) is not None:
            report[f'top1_step{step}_reconstructed'] = self._val(
                runner, algo.architecture)
        del reference
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
        algo.export(runner.work_dir, val_batches=runner.val_dataloader
                    if runner.val_loop is not None else None)


@HOOKS.register_module()
class SubnetReconstructHook(Hook):
    """Before training, refit a ``SubnetModel``'s sliced weights to its
    dense model (``model.reconstruct``), unless the run was resumed: the
    checkpoint then already has the refitted, fine-tuned weights.

    Args:
        eval_batches: Validation batches for the top-1 logged before and
            after (None: the whole validation set; 0: no evaluation).
    """

    priority = 'ABOVE_NORMAL'

    def __init__(self, eval_batches: int | None = None):
        self.eval_batches = eval_batches

    def before_train(self, runner) -> None:
        model = unwrap_model(runner.model)
        if not getattr(model, 'reconstruction_pending', False):
            return
        if runner.iter > 0:
            print_log('resumed: the refitted weights come from the '
                      'checkpoint, not reconstructed again', logger='current')
            return

        def val():
            if self.eval_batches == 0:
                return None
            return evaluate_top1(model.architecture, runner.val_dataloader,
                                 self.eval_batches)
        before = val()
        report = model.reconstruct_from_dense(runner.train_dataloader)
        print_log(f'subnet reconstructed ({len(report["layers"])} layers): '
                  f'top-1 {before} -> {val()}', logger='current')
