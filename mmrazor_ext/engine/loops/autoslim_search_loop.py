"""Greedy slimming of a trained AutoSlim supernet as the Runner's train loop."""
from __future__ import annotations

import copy
import itertools
import os.path as osp
from collections.abc import Sequence

from mmengine.dist import is_main_process
from mmengine.logging import print_log

from mmrazor_ext.registry import LOOPS
from mmrazor_ext.utils.io import atomic_torch_save
from mmrazor_ext.utils.model import unwrap_model

from .search_loop import SearchLoop

__all__ = ['AutoSlimSearchLoop']


@LOOPS.register_module()
class AutoSlimSearchLoop(SearchLoop):
    """Greedy slimming of a trained :class:`~mmrazor_ext.algorithms.AutoSlim`
    model (``train_cfg=dict(type='AutoSlimSearchLoop', ...)``, run by
    ``tools/train.py``; the supernet comes from ``model.init_checkpoint``).

    Besides the :class:`~mmrazor_ext.search.greedy.GreedySlimmer` outputs,
    ``supernet.pth`` (the architecture's weights, plain keys) is written to
    the work dir for the subnet-training config to slice from.

    Data: BN recalibration batches are the first ``bn_batches`` of the
    training set in a fixed shuffled order with the *test* pipeline, so a
    restarted search sees the same numbers. The held-out set is the val set
    (``heldout='val'``, first ``heldout_batches`` batches, None = all) or
    ``heldout='train'``: the next ``heldout_batches`` training batches after
    the BN batches in that order (disjoint from them).

    Args:
        runner: The Runner.
        dataloader: The Runner's train dataloader (unused: the search builds
            its own deterministic loaders from the config).
        target_flops_ratios: FLOPs fractions to reach.
        step: Channels (int) or fraction (float) per greedy step.
        min_keep_ratio: Smallest kept fraction (default: the model's
            ``min_keep_ratio``).
        tolerance: Relative distance below a target that counts as a hit.
        bn_batches: Batches for adaptive BN (K).
        heldout: ``'val'`` or ``'train'``.
        heldout_batches: Held-out batches (None: the whole val set).
        batch_size: Batch size of the search loaders (default: the train
            loader's).
        save_weights: Save sliced weights (BN recalibrated) next to each
            subnet JSON.
        resume: Continue from ``work_dir/autoslim_search.json``.
        max_steps: Greedy steps in this run (None: until done).
        seed: Seed of the fixed training-set order.
        min_ratio: Deprecated name of ``min_keep_ratio``.
    """

    def __init__(self, runner, dataloader,
                 target_flops_ratios: Sequence[float] = (0.5,),
                 step: int | float = 0.1,
                 min_keep_ratio: float | None = None,
                 tolerance: float = 0.02, bn_batches: int = 10,
                 heldout: str = 'val', heldout_batches: int | None = 10,
                 batch_size: int | None = None, save_weights: bool = True,
                 resume: bool = True, max_steps: int | None = None,
                 seed: int = 0, min_ratio: float | None = None):
        # lazily: search/ sits above engine/ (see the package docstring)
        from mmrazor_ext.search.greedy import check_flops_targets
        from mmrazor_ext.search.space import renamed_kwarg
        super().__init__(runner, dataloader)
        if heldout not in ('val', 'train'):
            raise ValueError(f"heldout must be 'val' or 'train', got "
                             f'{heldout!r}')
        if heldout == 'train' and not heldout_batches:
            raise ValueError("heldout='train' needs heldout_batches")
        self.targets = check_flops_targets(target_flops_ratios)
        self.min_keep_ratio = renamed_kwarg(
            min_keep_ratio, min_ratio, 'min_keep_ratio', 'min_ratio',
            'AutoSlimSearchLoop')
        # handed to greedy_slim as they are
        self.slim_kwargs = dict(step=step, tolerance=tolerance, resume=resume,
                                save_weights=save_weights, max_steps=max_steps)
        self.bn_batches = int(bn_batches)
        self.heldout = heldout
        self.heldout_batches = heldout_batches
        self.batch_size = batch_size
        self.seed = int(seed)
        self.results: list[dict] = []

    def _loader(self, split: str):
        cfg = self.runner.cfg
        loader = copy.deepcopy(cfg[f'{split}_dataloader'])
        loader.update(num_workers=0, persistent_workers=False)
        loader['sampler'] = dict(type='DefaultSampler',
                                 shuffle=split == 'train', seed=self.seed)
        if self.batch_size:
            loader['batch_size'] = int(self.batch_size)
        if split == 'train':
            test_pipeline = cfg.get('val_dataloader', {}).get(
                'dataset', {}).get('pipeline')
            if test_pipeline is not None and 'pipeline' in loader['dataset']:
                loader['dataset']['pipeline'] = copy.deepcopy(test_pipeline)
        return self.runner.build_dataloader(loader, seed=self.seed)

    def _save_supernet(self, model) -> None:
        # The architecture's own weights (no ``architecture.`` prefix) next
        # to the subnets: what a subnet-training config slices from.
        path = osp.join(self.runner.work_dir, 'supernet.pth')
        if not is_main_process():
            return
        state = {k: v.detach().cpu()
                 for k, v in model.architecture.state_dict().items()}
        atomic_torch_save(path, {'state_dict': state})

    def run(self):
        """Build the evaluator from the config's data, slim, save."""
        from mmrazor_ext.search import AdaptiveBNEvaluator
        from mmrazor_ext.search.greedy import greedy_slim
        runner = self.runner
        runner.call_hook('before_train')
        model = unwrap_model(runner.model)
        pruner = getattr(model, 'pruner', None)
        if pruner is None:
            raise ValueError('AutoSlimSearchLoop: the model must be an '
                             f'AutoSlim (with a pruner), got '
                             f'{type(model).__name__}')
        model.eval()
        train = self._loader('train')
        n_held = self.heldout_batches
        if self.heldout == 'train':
            bn = list(itertools.islice(iter(train), self.bn_batches + n_held))
            held = bn[self.bn_batches:]
            bn = bn[:self.bn_batches]
        else:
            bn = list(itertools.islice(iter(train), self.bn_batches))
            held = itertools.islice(iter(self._loader('val')), n_held)
        evaluator = AdaptiveBNEvaluator(pruner, bn, held,
                                        bn_batches=self.bn_batches)
        print_log(f'autoslim search: {len(pruner.channel_spaces)} spaces, '
                  f'{len(evaluator.bn_cache)} BN batches, '
                  f'{len(evaluator.val_cache)} held-out batches '
                  f'({self.heldout}), targets {self.targets}',
                  logger='current')
        min_keep_ratio = self.min_keep_ratio if \
            self.min_keep_ratio is not None else \
            getattr(model, 'min_keep_ratio', None)
        self._save_supernet(model)
        self.results = greedy_slim(
            pruner, evaluator, self.targets, min_keep_ratio=min_keep_ratio,
            work_dir=runner.work_dir, **self.slim_kwargs)
        runner.call_hook('after_train')
        return runner.model
