"""``RecipeLoop``: the stages of a compression recipe as phases of one run.

``train_cfg = dict(type='RecipeLoop', val_interval=1)`` with a model that
exposes the recipe interface (``stage_epochs``, ``stage_index``,
``enter_stage``, ``finish_stage``, ``before_train_iter`` /
``after_train_iter``, ``load_recipe_state``, ``write_results``: the
:class:`~mmrazor_ext.algorithms.CompressionRecipe`). The loop imports nothing
from ``algorithms/``.

* ``max_epochs`` is the sum of the stages' ``epochs``; stage ``i`` trains
  the epochs after those of the stages before it. At an epoch that starts a
  stage, the previous stage is finished (a pruned network exported, masks
  baked), the next one started, the optimizer re-bound to the network's
  new parameters (fresh state) and the LR schedule restarted: the config's
  ``param_scheduler`` describes one stage (``end`` = a stage's epochs).
* Stages of 0 epochs (``Deploy``, a pruning stage without fine-tuning) run
  at the boundary where they fall; the last ones after the final epoch.
* One process only (DDP would not see the parameters of the networks
  built at stage starts): torchrun is refused.
* The train loader is the project's resumable one, and ``--resume`` first
  rebuilds the checkpoint's network (``after_load_checkpoint``) and
  re-binds the optimizer, so the optimizer state of the pruned network
  loads into it.
"""
from __future__ import annotations

import copy
from collections import defaultdict

from mmengine.dist import get_world_size
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.runner import EpochBasedTrainLoop

from mmrazor_ext.registry import LOOPS
from mmrazor_ext.utils.model import unwrap_model

from .resumable_loop import ResumableEpochBasedTrainLoop, make_resumable_loader

__all__ = ['RecipeLoop']

_RECIPE_API = ('stage_epochs', 'enter_stage', 'finish_stage',
               'sparse_scheduler', 'load_recipe_state', 'write_results')


def _schedulers(scheds) -> list:
    if scheds is None:
        return []
    if isinstance(scheds, dict):
        return [s for v in scheds.values() for s in _schedulers(v)]
    if isinstance(scheds, (list, tuple)):
        return [s for v in scheds for s in _schedulers(v)]
    return [scheds] if hasattr(scheds, 'state_dict') else []


class _RecipeHook(Hook):
    """The loop's Runner-side events: LR snapshot and resume rebuild."""

    priority = 'HIGH'  # after RandomStateHook (HIGHEST), before the rest

    def __init__(self, loop: RecipeLoop):
        self.loop = loop

    def before_run(self, runner) -> None:
        self.loop.snapshot_lr()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if not getattr(runner, '_resume', False):
            return
        sd = checkpoint.get('state_dict', checkpoint)
        state = sd.get('_extra_state', sd.get('module._extra_state'))
        if not isinstance(state, dict) or 'stage_index' not in state:
            raise RuntimeError('RecipeLoop: the checkpoint has no recipe '
                               'state (_extra_state); it was not written by '
                               'a recipe run')
        unwrap_model(runner.model).load_recipe_state(state)
        # mmengine loads the optimizer state next: it must match the
        # rebuilt network's parameters.
        self.loop.rebind_optimizer()


@LOOPS.register_module()
class RecipeLoop(ResumableEpochBasedTrainLoop):
    """Train the stages of a compression recipe one after the other.

    Args:
        runner: The Runner.
        dataloader: Train loader (config or built).
        val_begin: First epoch to validate after.
        val_interval: Validate every this many epochs.
        max_epochs: Optional; must then equal the sum of the stages'
            ``epochs`` (which decide it).
    """

    def __init__(self, runner, dataloader, val_begin: int = 1,
                 val_interval: int = 1, max_epochs: int | None = None):
        model = unwrap_model(runner.model)
        missing = [a for a in _RECIPE_API if not hasattr(model, a)]
        if missing:
            raise TypeError(
                f'train_cfg.type=RecipeLoop needs a recipe model '
                f"(model=dict(type='CompressionRecipe', ...)); "
                f'{type(model).__name__} lacks {missing}')
        if get_world_size() > 1:
            # DDP registers the parameters once; the networks a recipe
            # builds at each stage would train without gradient sync.
            raise NotImplementedError(
                'RecipeLoop: a recipe runs in one process (torchrun / '
                '--launcher pytorch is not supported yet)')
        epochs = list(model.stage_epochs)
        total = sum(epochs)
        if total < 1:
            raise ValueError('RecipeLoop: the stages train 0 epochs in all; '
                             'give at least one stage epochs >= 1')
        if max_epochs is not None and max_epochs != total:
            raise ValueError(
                f'train_cfg.max_epochs={max_epochs}: a recipe trains the sum '
                f"of its stages' epochs ({epochs} -> {total}); set the "
                "stages' epochs instead (or leave max_epochs out)")
        EpochBasedTrainLoop.__init__(self, runner, dataloader, total,
                                     val_begin, val_interval)
        self.dataloader = make_resumable_loader(self.dataloader, runner.seed)
        self.stage_starts = [sum(epochs[:i]) for i in range(len(epochs))]
        self.stage_epochs = epochs
        self._lr_snapshot = None
        runner.register_hook(_RecipeHook(self))

    @property
    def model(self):
        return unwrap_model(self.runner.model)

    # -- optimizer and LR ---------------------------------------------------------
    def snapshot_lr(self) -> None:
        """Remember the LR schedulers and hyper-parameters of a stage start."""
        optim = self.runner.optim_wrapper.optimizer
        self._lr_snapshot = {
            'schedulers': [copy.deepcopy(s.state_dict()) for s in
                           _schedulers(self.runner.param_schedulers)],
            'groups': [{k: copy.deepcopy(v) for k, v in g.items()
                        if k != 'params'} for g in optim.param_groups]}

    def restart_lr(self) -> None:
        """Put the LR schedule back to its start (a new stage)."""
        snap = self._lr_snapshot
        if snap is None:
            return
        for sched, state in zip(_schedulers(self.runner.param_schedulers),
                                snap['schedulers']):
            sched.load_state_dict(copy.deepcopy(state))
        groups = self.runner.optim_wrapper.optimizer.param_groups
        for i, g in enumerate(groups):
            saved = snap['groups'][min(i, len(snap['groups']) - 1)]
            g.update(copy.deepcopy(saved))

    def rebind_optimizer(self) -> None:
        """Point the optimizer at the model's current parameters (a fresh
        state): the same optimizer object, so LR schedulers keep working.

        The groups come from the config's optimizer constructor (paramwise
        settings apply to the new parameters); hyper-parameters the
        schedulers change (lr, momentum) are taken from the old groups.
        """
        runner = self.runner
        optim = runner.optim_wrapper.optimizer
        fresh = runner.build_optim_wrapper(
            copy.deepcopy(runner.cfg.optim_wrapper)).optimizer
        old = optim.param_groups
        for i, g in enumerate(fresh.param_groups):
            src = old[min(i, len(old) - 1)]
            for k in ('lr', 'initial_lr', 'momentum', 'betas'):
                if k in src:
                    g[k] = copy.deepcopy(src[k])
        optim.param_groups = fresh.param_groups
        optim.state = defaultdict(dict)
        n = sum(len(g['params']) for g in optim.param_groups)
        print_log(f'RecipeLoop: optimizer re-bound to {n} parameter tensors',
                  logger='current')

    # -- stages ---------------------------------------------------------------------
    def _stage_of_epoch(self, epoch: int) -> int:
        """The stage that trains ``epoch`` (len(stages): after the last)."""
        for i, (start, n) in enumerate(zip(self.stage_starts,
                                           self.stage_epochs)):
            if n > 0 and start <= epoch < start + n:
                return i
        return len(self.stage_epochs)

    def _enter_stages(self, epoch: int) -> None:
        """Enter every stage up to the one that trains ``epoch`` (all
        remaining ones after the last epoch)."""
        target = self._stage_of_epoch(epoch)
        last = min(target, len(self.stage_epochs) - 1)
        model, runner = self.model, self.runner
        while model.stage_index < last or (
                target == len(self.stage_epochs)
                and model.stage_index < len(self.stage_epochs) - 1):
            index = model.stage_index + 1
            model.enter_stage(
                index, self.dataloader, val_batches=runner.val_dataloader,
                work_dir=runner.work_dir,
                total_iters=self.stage_epochs[index] * len(self.dataloader))
            self.rebind_optimizer()
            self.restart_lr()
            sched = getattr(model, 'sparse_scheduler', None)
            if sched is not None:
                # Amba restarts the LR at its own stages: from this state.
                sched.set_lr_scheduler(
                    _schedulers(runner.param_schedulers), drive=False)

    def _resume_sparse_scheduler(self) -> None:
        """Register the LR schedule of the stage start with a sparse
        scheduler rebuilt on resume (Amba restarts to it), then bring it to
        the resumed iteration."""
        optim = self.runner.optim_wrapper.optimizer
        scheds = _schedulers(self.runner.param_schedulers)
        now = ([copy.deepcopy(s.state_dict()) for s in scheds],
               [{k: copy.deepcopy(v) for k, v in g.items() if k != 'params'}
                for g in optim.param_groups])
        self.restart_lr()
        self.model.sparse_scheduler.set_lr_scheduler(scheds, drive=False)
        for sched, state in zip(scheds, now[0]):
            sched.load_state_dict(state)
        for g, saved in zip(optim.param_groups, now[1]):
            g.update(saved)
        self.model.sparse_scheduler.update(self._stage_iter())

    def _stage_iter(self) -> int:
        index = max(self.model.stage_index, 0)
        return self._iter - self.stage_starts[index] * len(self.dataloader)

    def run(self):
        """Train every stage, then finish the last ones and write the
        recipe report."""
        if self.model.sparse_scheduler is not None:  # resumed in its stage
            self._resume_sparse_scheduler()
        self.runner.call_hook('before_train')
        while self._epoch < self._max_epochs and not self.stop_training:
            self._enter_stages(self._epoch)
            self.run_epoch()
            self._decide_current_val_interval()
            if (self.runner.val_loop is not None
                    and self._epoch >= self.val_begin
                    and (self._epoch % self.val_interval == 0
                         or self._epoch == self._max_epochs)):
                self.runner.val_loop.run()
        if not self.stop_training:
            self._enter_stages(self._max_epochs)
            model = self.model
            model.finish_stage(self.runner.val_dataloader,
                               self.runner.work_dir)
            if self.runner.rank == 0:
                model.write_results(self.runner.work_dir)
        self.runner.call_hook('after_train')
        return self.runner.model

    def run_iter(self, idx, data_batch) -> None:
        """mmengine's iteration with the sparse scheduler's mask refresh
        right after the optimizer step (before hooks save checkpoints)."""
        stage_iter = self._stage_iter()
        self.model.before_train_iter(stage_iter)
        self.runner.call_hook('before_train_iter', batch_idx=idx,
                              data_batch=data_batch)
        outputs = self.runner.model.train_step(
            data_batch, optim_wrapper=self.runner.optim_wrapper)
        self.model.after_train_iter(stage_iter)
        self.runner.call_hook('after_train_iter', batch_idx=idx,
                              data_batch=data_batch, outputs=outputs)
        self._iter += 1
