"""``SparsityHook``: sparse training for any mm config.

Add to a config::

    custom_hooks = [dict(type='SparsityHook', sparsity_config=dict(
        scheduler=dict(type='AmbaLevelPruneScheduler',
                       kwargs=dict(sparsity_table=[30, 50, 70]))))]

or, the same for ``tools/train.py`` / ``tools/test.py``, a top-level
``sparsity = dict(...)`` (MSBench's dict, UP's ``sparsity:`` layout or a
YAML path; ``leaf_module = [...]`` beside it is read with it), which
:func:`mmrazor_ext.engine.config_guard.apply_sparsity_key` turns into this
hook. Either is the equivalent of UP / MSBench's sparse runner
(``runner: type: sparse``): build the float model, load the float checkpoint
(``load_from``), trace the network and attach the fake-sparse nodes, train
with the scheduler driving masks and LR restarts.

Order of events in ``Runner.train``:

* ``before_run`` (before weight init and ``load_from`` / ``--resume``):
  initialise the model weights, attach the fake-sparse nodes, add their
  parameters (STR thresholds, ProbMask scores) to the optimizer and
  register the LR schedulers the scheduler may restart.
* ``after_load_checkpoint``: on ``--resume`` restore the scheduler state
  (stage, iteration); masks and thresholds come back with the model.
* ``before_train``: compute the first masks from the loaded weights (a no-op
  after a resume).
* ``before_train_iter``: enter a new stage (new masks, LR restart).
* ``after_train_iter``: re-apply / refresh masks, advance the scheduler
  (stage checkpoints, ProbMask projection).
"""
import os.path as osp
from typing import Any

from mmengine.dist import all_reduce, get_world_size
from mmengine.hooks import Hook
from mmengine.optim import OptimWrapper

from mmrazor_ext.registry import HOOKS
from mmrazor_ext.sparsity import build_sparse_scheduler
from mmrazor_ext.utils.model import unwrap_model

CKPT_KEY = 'sparsity'


@HOOKS.register_module()
class SparsityHook(Hook):
    """Drive a sparse scheduler from an mmengine ``Runner``.

    Args:
        sparsity_config: The MSBench-style dict, UP's layout or a YAML
            path (see :func:`mmrazor_ext.sparsity.build_sparse_scheduler`). Unset
            ``total_iters`` becomes the Runner's ``max_iters``; unset
            ``save_dir`` / ``output_dir`` go under ``work_dir``.
        concrete_args: Tracer concrete args (mmengine models default to
            their ``mode='tensor'`` path).
        log_interval: Iterations between sparsity log scalars.
    """

    # After ParamSchedulerHook (LOW = 70): an LR restart must win over the
    # step the LR scheduler takes at the same iteration boundary; before
    # CheckpointHook (VERY_LOW = 90) so a checkpoint holds the updated state.
    priority = 80

    def __init__(self, sparsity_config: dict, concrete_args: Any = None,
                 log_interval: int = 50):
        # Build now so a bad config fails when the Runner is built, not later.
        self.sparsity_config = sparsity_config
        self.scheduler = build_sparse_scheduler(sparsity_config)
        self.concrete_args = concrete_args
        self.log_interval = log_interval
        self._prepared = False

    @staticmethod
    def _model(runner):
        return unwrap_model(runner.model)

    def before_run(self, runner) -> None:
        if self._prepared:
            return
        model = self._model(runner)
        # Initialise first: init code that writes to ``layer.weight`` after
        # preparation would write into a temporary masked tensor.
        if hasattr(model, 'init_weights') and not getattr(model, '_is_init', False):
            model.init_weights()
        sched = self.scheduler
        if getattr(sched, 'total_iters', 0) is None:
            sched.total_iters = int(runner.max_iters)
        if hasattr(sched, 'save_dir') and sched.save_dir is None:
            sched.save_dir = osp.join(runner.work_dir, 'sparse_ckpts')
        if hasattr(sched, 'output_dir') and sched.output_dir is None:
            sched.output_dir = osp.join(runner.work_dir, 'sparse_analysis')
        sched.prepare_sparse_model(model, concrete_args=self.concrete_args,
                                   init_masks=False)
        # In val / test runs the optimizer and LR schedulers are unbuilt
        # configs: nothing to train, the masks come from the checkpoint.
        if isinstance(runner.optim_wrapper, OptimWrapper):
            self._add_extra_params(runner)
        lr_scheds = _flatten(runner.param_schedulers)
        if lr_scheds:
            sched.set_lr_scheduler(lr_scheds, drive=False)
        self._prepared = True

    def _add_extra_params(self, runner) -> None:
        """Give the optimizer the fake-sparse parameters (STR thresholds,
        ProbMask scores): group 0's hyper-parameters, updated by the
        scheduler's :meth:`extra_param_group`."""
        params = self.scheduler.extra_parameters()
        if not params:
            return
        optim = getattr(runner.optim_wrapper, 'optimizer', None)
        if optim is None:
            runner.logger.warning('SparsityHook: optim_wrapper has no single '
                                  'optimizer; fake-sparse parameters are not '
                                  'trained')
            return
        group = {k: v for k, v in optim.param_groups[0].items() if k != 'params'}
        group.update(self.scheduler.extra_param_group(), params=params)
        optim.add_param_group(group)
        if get_world_size() > 1:
            # DDP registered its parameters before these existed, so their
            # gradients are averaged here, right after backward.
            for p in params:
                p.register_post_accumulate_grad_hook(
                    lambda q: all_reduce(q.grad, op='mean'))
        # mmengine schedulers keep one base value per group.
        for sched in _flatten(runner.param_schedulers):
            base = getattr(sched, 'base_values', None)
            if isinstance(base, list) and len(base) < len(optim.param_groups):
                base.append(base[0])
        runner.logger.info(f'SparsityHook: {sum(p.numel() for p in params)} '
                           'fake-sparse parameters added to the optimizer')

    def before_train(self, runner) -> None:
        self.scheduler.update(runner.iter)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        # A new Amba stage starts here, not at the end of the previous
        # iteration, so validation / checkpoints at a stage end see the
        # finished stage.
        self.scheduler.before_iter(runner.iter)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs=None) -> None:
        self.scheduler.after_optimizer_step()
        self.scheduler.update(runner.iter + 1, enter_stage=False)
        if self.every_n_train_iters(runner, self.log_interval):
            runner.message_hub.update_scalar(
                'train/sparsity', self.scheduler.global_sparsity())

    def after_train(self, runner) -> None:
        runner.logger.info(
            f'SparsityHook: final global sparsity '
            f'{100 * self.scheduler.global_sparsity():.2f}% over '
            f'{len(self.scheduler.layers)} layers')

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        # Plain python values only: loads with weights_only=True.
        checkpoint[CKPT_KEY] = {'type': type(self.scheduler).__name__,
                                'state': self.scheduler.state_dict()}

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self._fill_fake_sparse_entries(runner, checkpoint)
        state = checkpoint.get(CKPT_KEY)
        if not state or not runner._resume:
            return
        if state.get('type') != type(self.scheduler).__name__:
            raise RuntimeError(
                f'SparsityHook: checkpoint was written by {state.get("type")}, '
                f'config uses {type(self.scheduler).__name__}')
        self.scheduler.load_state_dict(state['state'])
        runner.logger.info(f'SparsityHook: resumed {self.scheduler!r}')


    def _fill_fake_sparse_entries(self, runner, checkpoint: dict) -> None:
        """A dense checkpoint (``load_from`` a float model) has no masks /
        thresholds: keep the current ones instead of a missing-key warning
        per layer."""
        if not self._prepared or not isinstance(checkpoint, dict):
            return
        sd = checkpoint.get('state_dict', checkpoint)
        if not isinstance(sd, dict):
            return
        prefix = 'module.' if any(k.startswith('module.') for k in sd) else ''
        added = 0
        for k, v in self._model(runner).state_dict().items():
            if '.weight_fake_sparse.' in k and prefix + k not in sd:
                sd[prefix + k] = v.detach().clone()
                added += 1
        if added:
            runner.logger.info(f'SparsityHook: checkpoint has no fake-sparse '
                               f'state for {added} entries (a dense model); '
                               'masks start from the scheduler')


def _flatten(scheds):
    """Built LR schedulers (a Runner keeps unbuilt configs outside train)."""
    if scheds is None:
        return []
    if isinstance(scheds, dict) and 'type' not in scheds:
        return [s for v in scheds.values() for s in _flatten(v)]
    if isinstance(scheds, (list, tuple)):
        return [s for v in scheds for s in _flatten(v)]
    built = not isinstance(scheds, dict) and hasattr(scheds, 'state_dict')
    return [scheds] if built else []
