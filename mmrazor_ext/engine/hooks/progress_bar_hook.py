"""ProgressBarHook: tqdm bars for training epochs and validation.

mmengine's LoggerHook writes a line every ``interval`` iterations to the
console and the log file. When the console is kept quiet (``tools/demo.py``
sends the Runner's console output to a file), these bars are what a user
watches; the log file keeps every line.
"""
from __future__ import annotations

import sys

from mmengine.hooks import Hook

from mmrazor_ext.registry import HOOKS

__all__ = ['ProgressBarHook']


@HOOKS.register_module()
class ProgressBarHook(Hook):
    """One bar per training epoch (loss shown) and per validation run,
    on rank 0 only.

    Args:
        desc: Prefix of every bar (default: the experiment name).
        val: Also show a bar while validating.
        file: Stream for the bars; default ``sys.stderr`` at the time the
            bar is made, so a redirected ``sys.stdout`` does not hide them.
    """

    priority = 'LOW'

    def __init__(self, desc: str | None = None, val: bool = True,
                 file=None):
        self.desc = desc
        self.val = val
        self.file = file
        self._bar = None

    def _open(self, runner, total: int, desc: str, initial: int = 0):
        from tqdm import tqdm
        self._close()
        if runner.rank != 0:
            return
        self._bar = tqdm(total=total, initial=initial, desc=desc,
                         file=self.file or sys.stderr, dynamic_ncols=True,
                         leave=True)

    def _close(self, postfix: dict | None = None) -> None:
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)
            self._bar.close()
            self._bar = None

    def _name(self, runner) -> str:
        return self.desc or runner.experiment_name

    def before_train_epoch(self, runner) -> None:
        total = len(runner.train_dataloader)
        # a run resumed mid-epoch starts its bar where the epoch stopped
        done = max(0, min(total, runner.iter - runner.epoch * total))
        self._open(runner, total, f'{self._name(runner)} epoch '
                   f'{runner.epoch + 1}/{runner.max_epochs}', done)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs=None) -> None:
        if self._bar is None:
            return
        if outputs and 'loss' in outputs:
            self._bar.set_postfix(loss=f"{float(outputs['loss']):.4f}",
                                  refresh=False)
        self._bar.update(1)

    def after_train_epoch(self, runner) -> None:
        self._close()

    def before_val_epoch(self, runner) -> None:
        if self.val:
            self._open(runner, len(runner.val_dataloader),
                       f'{self._name(runner)} val')

    def after_val_iter(self, runner, batch_idx: int, data_batch=None,
                       outputs=None) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def after_val_epoch(self, runner, metrics: dict | None = None) -> None:
        self._close({k.split('/')[-1]: f'{v:.2f}' for k, v in
                     (metrics or {}).items() if isinstance(v, float)})

    def after_run(self, runner) -> None:
        self._close()
