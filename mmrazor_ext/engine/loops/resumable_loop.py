"""Training data whose randomness survives a kill and ``--resume``.

mmengine seeds each data-loader worker once (``seed + worker_id``); with
``persistent_workers`` the workers' RNGs then run on across epochs, and with
``num_workers=0`` the pipeline draws from the main process's RNG. Neither
stream is in a checkpoint, so a resumed run augments differently from an
uninterrupted one. Here the randomness of every sample is a function of
``(seed, epoch, position in the epoch, dataset index)`` only:

* :class:`ResumableSampler` wraps the sampler and yields :class:`SampleKey`
  ``(epoch, position, index)``; it can skip the first batches of an epoch
  (resuming from a checkpoint written inside the epoch);
* :class:`SeededDataset` wraps the dataset; for a key it seeds ``random``,
  ``numpy`` and torch's CPU generator from the key, runs the pipeline, and
  (in the main process) puts the previous RNG states back.

The number of workers, their seeds and persistence no longer matter, and an
epoch resumed at any batch sees exactly the samples and augmentations of the
uninterrupted run. :class:`ResumableEpochBasedTrainLoop` resumes inside an
epoch from an iteration checkpoint instead of replaying the whole epoch.
"""
from __future__ import annotations

import random
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np
import torch
from mmengine.logging import print_log
from mmengine.runner import EpochBasedTrainLoop
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    IterableDataset,
    Sampler,
    get_worker_info,
)

from mmrazor_ext.registry import LOOPS

__all__ = ['ResumableEpochBasedTrainLoop', 'ResumableSampler', 'SampleKey',
           'SeededDataset', 'make_resumable_loader']


class SampleKey(NamedTuple):
    """What :class:`ResumableSampler` yields instead of a bare index."""

    epoch: int
    position: int
    index: int


def sample_seeds(seed: int, key: SampleKey) -> tuple[int, int, int]:
    """Seeds for (numpy, python, torch) of one sample, from its key."""
    state = np.random.SeedSequence(
        [int(seed) & 0xFFFFFFFF, key.epoch, key.position, key.index]
    ).generate_state(4)
    return int(state[0]), int(state[1]), int(state[2]) | int(state[3]) << 32


@contextmanager
def seeded(seed: int, key: SampleKey):
    """Seed the global RNGs for one sample; restore them in the main
    process (a worker's global RNG serves only its samples)."""
    in_worker = get_worker_info() is not None
    if not in_worker:
        saved = (random.getstate(), np.random.get_state(),
                 torch.random.default_generator.get_state())
    np_seed, py_seed, torch_seed = sample_seeds(seed, key)
    np.random.seed(np_seed)
    random.seed(py_seed)
    torch.random.default_generator.manual_seed(torch_seed)
    try:
        yield
    finally:
        if not in_worker:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.random.default_generator.set_state(saved[2])


class SeededDataset(Dataset):
    """A dataset whose items are prepared under per-sample seeds.

    Args:
        dataset: The wrapped (map-style) dataset; its attributes
            (``metainfo``, ...) are reachable through this wrapper.
        seed: The run's seed.
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        if isinstance(key, SampleKey):
            with seeded(self.seed, key):
                return self.dataset[key.index]
        return self.dataset[key]

    def __getattr__(self, name):
        if name in ('dataset', 'seed') or name.startswith('__'):
            raise AttributeError(name)
        return getattr(self.dataset, name)


class ResumableSampler(Sampler):
    """Yield :class:`SampleKey` s of the wrapped sampler's indices.

    Args:
        sampler: An index sampler (mmengine ``DefaultSampler``,
            ``InfiniteSampler``, a torch sampler).
    """

    def __init__(self, sampler: Sampler):
        self.sampler = sampler
        self._epoch = 0
        self._skip: tuple[int, int] | None = None

    @property
    def epoch(self) -> int:
        """The epoch that goes into the sample keys."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch of the keys and of the wrapped sampler."""
        self._epoch = int(epoch)
        if hasattr(self.sampler, 'set_epoch'):
            self.sampler.set_epoch(epoch)

    def mark_epoch(self, epoch: int) -> None:
        """Set only the epoch of the keys (the train loop's epoch), so that
        augmentations differ per epoch even without ``set_epoch`` calls."""
        self._epoch = int(epoch)

    def skip(self, epoch: int, num_samples: int) -> None:
        """Leave out the first ``num_samples`` of ``epoch`` (an epoch
        resumed after that many samples were trained)."""
        self._skip = (epoch, num_samples) if num_samples > 0 else None

    def __iter__(self):
        epoch = self.epoch
        skip = self._skip[1] if self._skip and self._skip[0] == epoch else 0
        for position, index in enumerate(self.sampler):
            if position >= skip:
                yield SampleKey(epoch, position, int(index))

    def __len__(self) -> int:
        return len(self.sampler)

    def __getattr__(self, name):
        if name in ('sampler', '_epoch', '_skip') or name.startswith('__'):
            raise AttributeError(name)
        return getattr(self.sampler, name)


def _loader_kwargs(loader: DataLoader) -> dict:
    kwargs = dict(num_workers=loader.num_workers,
                  collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
                  timeout=loader.timeout, worker_init_fn=loader.worker_init_fn,
                  multiprocessing_context=loader.multiprocessing_context,
                  generator=loader.generator,
                  persistent_workers=loader.persistent_workers,
                  pin_memory_device=loader.pin_memory_device)
    if loader.num_workers > 0:
        kwargs['prefetch_factor'] = loader.prefetch_factor
    if hasattr(loader, 'in_order'):
        kwargs['in_order'] = loader.in_order
    return kwargs


def make_resumable_loader(loader: DataLoader, seed: int) -> DataLoader:
    """The same loader with :class:`SeededDataset` / :class:`ResumableSampler`.

    Falls back to ``loader`` itself (with a warning) for iterable datasets
    and batch samplers that do not expose their ``sampler``.
    """
    if isinstance(loader.dataset, SeededDataset):
        return loader
    if isinstance(loader.dataset, IterableDataset):
        print_log('resume: an IterableDataset cannot be resumed '
                  'bit-for-bit (its data order is not checkpointed)',
                  logger='current', level=30)
        return loader
    dataset = SeededDataset(loader.dataset, seed)
    kwargs = _loader_kwargs(loader)
    batch_sampler = loader.batch_sampler
    if loader.batch_size is not None and type(batch_sampler) is BatchSampler \
            and batch_sampler.sampler is loader.sampler:
        return DataLoader(dataset, batch_size=loader.batch_size,
                          sampler=ResumableSampler(loader.sampler),
                          drop_last=loader.drop_last, **kwargs)
    if batch_sampler is not None and isinstance(
            getattr(batch_sampler, 'sampler', None), Sampler):
        batch_sampler.sampler = ResumableSampler(batch_sampler.sampler)
        return DataLoader(dataset, batch_sampler=batch_sampler, **kwargs)
    print_log(f'resume: {type(batch_sampler).__name__} has no .sampler; the '
              'data order and augmentation of a resumed run may differ',
              logger='current', level=30)
    return loader


def index_sampler(loader: DataLoader) -> Sampler | None:
    """The :class:`ResumableSampler` of ``loader``, if it has one."""
    for sampler in (loader.sampler,
                    getattr(loader.batch_sampler, 'sampler', None)):
        if isinstance(sampler, ResumableSampler):
            return sampler
    return None


@LOOPS.register_module()
class ResumableEpochBasedTrainLoop(EpochBasedTrainLoop):
    """mmengine's epoch loop that can resume inside an epoch.

    mmengine replays a whole epoch after resuming from a checkpoint written
    in its middle (``CheckpointHook(by_epoch=False)``); here the batches the
    checkpoint already trained are skipped (in the sampler: no data is
    loaded for them) and batch indices continue where they stopped.
    """

    def run_epoch(self) -> None:
        """Iterate one epoch, from the first batch not trained yet."""
        self.runner.call_hook('before_train_epoch')
        self.runner.model.train()
        per_epoch = len(self.dataloader)
        start = self._iter - self._epoch * per_epoch
        if not 0 < start < per_epoch:
            start = 0
        sampler = index_sampler(self.dataloader)
        if sampler is not None:
            sampler.mark_epoch(self._epoch)
        if start:
            self._skip_batches(sampler, start)
        for idx, data_batch in enumerate(self.dataloader, start):
            self.run_iter(idx, data_batch)
        self.runner.call_hook('after_train_epoch')
        self._epoch += 1

    def _skip_batches(self, sampler, start: int) -> None:
        print_log(f'resume: epoch {self._epoch + 1} continues at batch '
                  f'{start + 1}/{len(self.dataloader)}', logger='current')
        batch_size = self.dataloader.batch_size
        if sampler is None or batch_size is None:
            raise RuntimeError(
                'resume inside an epoch needs the project\'s resumable '
                'train loader (a sampler with batch_size); resume from an '
                'epoch checkpoint instead')
        sampler.skip(self._epoch, start * batch_size)
