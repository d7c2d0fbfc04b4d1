"""The project's Runner: mmengine's, made safe and exactly resumable.

Differences from ``mmengine.runner.Runner``:

* **Config checks first.** :func:`~mmrazor_ext.engine.config_checks.check_config`
  runs in :meth:`Runner.from_cfg` before anything is built or written.
* **Resume wins over load_from.** ``resume=True`` continues from the latest
  checkpoint of the work dir, ``resume_from=PATH`` from that file. A
  ``load_from`` given as well only initialises a run that has nothing to
  resume yet; the log says which file is used. (mmengine resumes *from*
  ``load_from``, so ``--resume`` with a dense ``load_from`` silently
  "resumed epoch 3" of another run.)
* **Strict loading.** ``load_from``, ``resume`` (and ``tools/test.py``)
  load with :func:`~mmrazor_ext.engine.checkpoint.load_model_state`: a
  checkpoint that does not fit the model is an error listing the
  mismatches, unless ``load_strict=False`` (``--non-strict``). (mmengine
  resumes leniently: a wrong file continued with warnings.)
* **Bit-exact resume.** The training loader is made resumable
  (:mod:`mmrazor_ext.engine.loops.resumable_loop`: per-sample seeds, batch skipping),
  epoch loops can resume inside an epoch, and
  :class:`~mmrazor_ext.engine.hooks.RandomStateHook` checkpoints the RNGs.
* Algorithms keep plain Python state (pruning step, masks, search
  progress) in ``get_extra_state``; mmengine's ``_init_model_weights``
  broadcasts *every* ``state_dict`` entry from rank 0, which fails under
  torchrun on such an entry. Here only tensors are broadcast.
"""
from __future__ import annotations

import copy

import torch
from mmengine.config import Config
from mmengine.dist import broadcast
from mmengine.logging import print_log
from mmengine.registry import RUNNERS as MM_RUNNERS
from mmengine.runner import BaseLoop, IterBasedTrainLoop
from mmengine.runner import Runner as _Runner
from mmengine.runner.checkpoint import find_latest_checkpoint

from mmrazor_ext.registry import RUNNERS
from mmrazor_ext.utils import unwrap_model

from .checkpoint import load_model_state, safe_load
from .config_checks import check_config
from .hooks.rng_state_hook import RandomStateHook
from .loops.resumable_loop import (
    ResumableEpochBasedTrainLoop,
    index_sampler,
    make_resumable_loader,
)

__all__ = ['Runner', 'adapt_to_device', 'build_runner']


@RUNNERS.register_module()
class Runner(_Runner):
    """mmengine's Runner with safe, strict loading and exact resume."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        cfg = self.cfg
        self.load_strict = bool(cfg.get('load_strict', True))
        self.resume_from = cfg.get('resume_from')
        self._resuming = False
        if not any(isinstance(h, RandomStateHook) for h in self.hooks):
            self.register_hook(RandomStateHook())

    @classmethod
    def from_cfg(cls, cfg) -> Runner:
        """Check the config's fields, then build as mmengine does."""
        check_config(cfg)
        return super().from_cfg(cfg)

    @property
    def resuming(self) -> bool:
        """True while :meth:`resume` loads a checkpoint."""
        return self._resuming

    # -- loading -----------------------------------------------------------------
    def load_or_resume(self) -> None:
        """Resume if asked (``resume_from`` or the latest checkpoint of the
        work dir), else load ``load_from`` strictly."""
        if self._has_loaded:
            return None
        if self._resume:
            path = self.resume_from or find_latest_checkpoint(self.work_dir)
            if path:
                if self._load_from and self._load_from != path:
                    self.logger.warning(
                        f'resume: continuing from {path}; load_from='
                        f'{self._load_from} is ignored (it only initialises '
                        'a run with nothing to resume)')
                self.resume(path)
                self._has_loaded = True
                return None
            self.logger.info(
                f'resume: no checkpoint in {self.work_dir}; starting from '
                + (f'load_from={self._load_from}' if self._load_from
                   else 'scratch'))
            self._resume = False
        if self._load_from is not None:
            self.load_checkpoint(self._load_from, strict=self.load_strict)
            self._has_loaded = True
        return None

    def resume(self, filename: str, resume_optimizer: bool = True,
               resume_param_scheduler: bool = True,
               map_location='default') -> None:
        """mmengine's resume; the train loader follows a restored seed."""
        self._resuming = True
        try:
            super().resume(filename, resume_optimizer,
                           resume_param_scheduler, map_location)
        finally:
            self._resuming = False
        loader = getattr(self.train_loop, 'dataloader', None)
        if loader is not None and hasattr(loader.dataset, 'seed'):
            loader.dataset.seed = int(self.seed)
            sampler = index_sampler(loader)
            if sampler is not None and hasattr(sampler.sampler, 'seed'):
                sampler.sampler.seed = int(self.seed)

    def load_checkpoint(self, filename: str, map_location='cpu',
                        strict: bool | None = None,
                        revise_keys: list = [(r'^module.', '')]):  # noqa: B006
        """Load ``filename`` with the safe loader into the model.

        Args:
            filename: Path or URL (any scheme of :func:`safe_load`).
            map_location: As for ``torch.load``.
            strict: Require an exact fit (a mismatch is an error listing
                the keys); False keeps mmengine's warnings. ``None`` (what
                mmengine's ``resume`` passes): the config's ``load_strict``
                (default True) while resuming, else False.
            revise_keys: ``(pattern, replacement)`` pairs for the keys.
        """
        if strict is None:
            strict = self.load_strict if self._resuming else False
        checkpoint = safe_load(filename, map_location=map_location)
        self.call_hook('after_load_checkpoint', checkpoint=checkpoint)
        load_model_state(unwrap_model(self.model), checkpoint, filename,
                         strict=strict, revise_keys=revise_keys,
                         logger=self.logger)
        self._has_loaded = True
        self.logger.info(f'Load checkpoint from {filename}')
        return checkpoint

    # -- training loop -----------------------------------------------------------
    def build_train_loop(self, loop):
        """Standard loops get the resumable train loader; epoch loops can
        resume inside an epoch. Loops with a ``type`` are built as is."""
        if isinstance(loop, BaseLoop) or not isinstance(loop, dict) or \
                'type' in loop or 'by_epoch' not in loop:
            return super().build_train_loop(loop)
        loop_cfg = copy.deepcopy(loop)
        by_epoch = loop_cfg.pop('by_epoch')
        dataloader = self._train_dataloader
        if isinstance(dataloader, dict):
            diff_rank_seed = self.cfg.get('randomness', {}).get(
                'diff_rank_seed', False)
            dataloader = self.build_dataloader(
                dataloader, seed=self.seed, diff_rank_seed=diff_rank_seed)
        if isinstance(dataloader, torch.utils.data.DataLoader):
            dataloader = make_resumable_loader(dataloader, self.seed)
        cls = ResumableEpochBasedTrainLoop if by_epoch else IterBasedTrainLoop
        return cls(**loop_cfg, runner=self, dataloader=dataloader)

    def _init_model_weights(self) -> None:
        model = unwrap_model(self.model)
        if hasattr(model, 'init_weights'):
            model.init_weights()
            for value in model.state_dict().values():
                if hasattr(value, 'is_floating_point'):  # a tensor
                    broadcast(value)


def adapt_to_device(cfg: Config) -> Config:
    """Make a config written for GPUs run where there is no CUDA device.

    gloo replaces nccl (and the process group is started here), DDP gets
    ``device_ids=None`` (CPU modules) and ``AmpOptimWrapper`` (CUDA only)
    falls back to fp32 with a warning.
    """
    if torch.cuda.is_available():
        return cfg
    cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})['backend'] = 'gloo'
    if cfg.get('launcher', 'none') != 'none':
        # mmengine's init_dist always calls torch.cuda.set_device; the Runner
        # skips it when a process group already exists, so start gloo here.
        import torch.distributed as dist
        if not dist.is_initialized():
            dist.init_process_group(backend='gloo')
        wrapper = cfg.get('model_wrapper_cfg') or dict(
            type='MMDistributedDataParallel')
        wrapper.setdefault('device_ids', None)
        wrapper.setdefault('broadcast_buffers', False)
        cfg.model_wrapper_cfg = wrapper
    optim = cfg.get('optim_wrapper')
    if optim is not None and optim.get('type') == 'AmpOptimWrapper':
        print_log('--amp needs a CUDA device; training in fp32 on CPU',
                  logger='current', level=30)
        optim.type = 'OptimWrapper'
        optim.pop('loss_scale', None)
    return cfg


def build_runner(cfg: Config) -> _Runner:
    """Register the project's modules, check the config, build its Runner.

    ``runner_type`` in the config selects another Runner class; otherwise
    :class:`Runner` is used.
    """
    from mmrazor_ext.registry import register_all_modules
    register_all_modules(init_default_scope=False)
    check_config(cfg)
    cfg = adapt_to_device(cfg)
    if 'runner_type' in cfg:
        if cfg.get('resume') and cfg.get('resume_from'):
            # mmengine's Runner resumes from ``load_from``
            if cfg.get('load_from') not in (None, cfg.resume_from):
                print_log(f'resume: continuing from {cfg.resume_from}; '
                          f'load_from={cfg.load_from} is ignored',
                          logger='current', level=30)
            cfg.load_from = cfg.resume_from
        return MM_RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)
