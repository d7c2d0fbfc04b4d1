"""AMC (He et al. 2018) as an mmengine algorithm: search, fine-tune, export.

:class:`AMCPruning` wraps an ``architecture`` like :class:`OneShotPruning`
and is driven by :class:`~mmrazor_ext.engine.hooks.AMCPruningHook` (a
:class:`PruningHook` that also hands the algorithm the work dir and the
validation loader). Before training, the DDPG agent searches per-space keep
ratios on the masked model (:func:`~mmrazor_ext.search.amc_workflow.run_amc`,
the workflow ``MCPruning.prune_model`` also runs); each episode is scored by
top-1 / top-5 on cached batches after BN recalibration on a few cached
training batches (BN statistics and any reconstructed weights are restored
after every episode). The search writes to the work dir:

* ``kmc-pruning.csv`` (Knight's columns; best ``save_top_k`` episodes by
  reward) and ``amc-episodes.csv`` (every episode);
* ``amc_checkpoints/*.pth`` (the kept episodes' exported models, loadable
  with ``MCPruning.load_pruned_model`` into a fresh architecture);
* ``amc_best_subnet.json``, ``amc_best_state.pth`` (masked-mode weights of
  the best episode, fm-reconstructed ones included) and ``amc_search.json``.

With ``reconstruct=dict(method='least_squares', ...)`` the best episode is
then refitted against the original dense model (the consumers of pruned
channels, sequentially, by :meth:`ChannelPruner.reconstruct`; this replaces
the episode's fm-reconstruction weights) before BN recalibration. The best
episode is then fine-tuned in masked mode and exported
(``pruned_model.pth``, ``subnet.json``, ``report.json``) like the other
algorithms. The search is never repeated: ``--resume`` restores masks and
weights from the checkpoint (the pruning step lives in ``_extra_state``),
and a run restarted before its first checkpoint reuses ``amc_search.json``
when the search settings are unchanged. Under distributed training rank 0
searches while the other ranks wait at a barrier (mind the process group's
timeout for long searches), then every rank loads the same result.

``target=dict(mode='latency', ratio=0.5)`` (or ``ms=``, plus the table keys
of channel pruning's latency target: ``batch``, ``grid``, ``repeats``,
``cache_dir``, ``num_threads``, ``clock``) replaces the MAC budget
``amc_cfg.target_density``: every action is clamped so that the episode
meets the budget on the pruner's latency table
(``ChannelPruner.estimate_latency``; no model is timed per episode), the
state's cost entries and the reward's cost term use that estimate too.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os.path as osp
import time
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from mmengine.dist import barrier, get_rank, is_distributed
from mmengine.logging import print_log
from torch import nn

from mmrazor_ext.engine.checkpoint import safe_load
from mmrazor_ext.registry import MODELS
from mmrazor_ext.search.amc_search import LatencyProvider, parse_amc_cfg
from mmrazor_ext.search.amc_workflow import run_amc
from mmrazor_ext.search.latency_objective import (
    LatencyObjective,
    check_latency_config,
)
from mmrazor_ext.utils.evaluation import (
    evaluate_top1,
    recalibrate_bn,
    to_tensors,
)
from mmrazor_ext.utils.io import atomic_torch_save

from .channel_pruning import OneShotPruning

__all__ = ['AMCPruning']

_REWARD_DATA = ('train', 'val')


@MODELS.register_module()
class AMCPruning(OneShotPruning):
    """Search keep ratios with AMC, fine-tune the best episode, export.

    Args:
        architecture: Model config (or module) to prune.
        input_shape: Example input shape for tracing.
        amc_cfg: Knight ``amc_cfg`` keys (see
            :func:`~mmrazor_ext.search.amc_search.parse_amc_cfg`), e.g.
            ``dict(protocol='mac-constrained', target_density=0.5,
            pruning_method='l1-rank', ddpg_cfg=dict(warmup=100,
            num_training_episodes=300))``.
        network: Ordered layer names to prune (Knight ``network``); None =
            every prunable space.
        calib_batches: Training batches cached for BN recalibration before
            every episode's evaluation (0: no recalibration).
        reward_batches: Batches cached for the reward (top-1 = ``ind1``,
            top-5 = ``ind2``, cross-entropy = ``vloss``).
        reward_data: ``'train'`` (held-out training batches after the
            calibration ones, as in AMC) or ``'val'`` (the validation
            loader).
        feature_batches: Training batches whose features fm-reconstruction
            samples (from the cached calibration batches).
        latency: ``dict(run=True, cmd=None, repeats=10)`` measures each
            episode's latency (``cmd``: external command template with
            ``{onnx}``); off by default.
        target: Default ``dict(mode='flops', ratio=target_density)``;
            ``dict(mode='latency', ratio=r | ms=t, ...)`` budgets the
            latency table's estimate instead (then leave
            ``amc_cfg.target_density`` out).
        seed: Seed of the agent and of the environment's sampling.
        ckpt_prefix: Name prefix of the episode checkpoints.
        **kwargs: :class:`OneShotPruning` arguments (``init_checkpoint``,
            ``bn_recalib_batches``, ``pruner``, ``data_preprocessor``,
            ``reconstruct``: refit the chosen subnet against the dense model
            before fine-tuning, see :class:`PruningAlgorithm`).
    """

    def __init__(self, architecture: dict | nn.Module,
                 input_shape: Iterable[int] = (1, 3, 32, 32),
                 amc_cfg: dict | None = None,
                 network: list[str] | None = None,
                 calib_batches: int = 10, reward_batches: int = 10,
                 reward_data: str = 'train', feature_batches: int = 4,
                 latency: dict | None = None, seed: int = 0,
                 ckpt_prefix: str = 'amc', **kwargs):
        amc_raw = json.loads(json.dumps(amc_cfg or {}))
        amc = parse_amc_cfg(amc_cfg, 'model.amc_cfg')
        if 'seed' not in (amc_raw.get('ddpg_cfg') or {}):
            amc['ddpg_cfg'].seed = int(seed)
        kwargs.setdefault('target', dict(mode='flops',
                                         ratio=amc['target_density']))
        super().__init__(architecture, input_shape, metric='l1', **kwargs)
        if self.target['mode'] == 'latency' and \
                amc_raw.get('target_density') is not None:
            raise ValueError("amc_cfg.target_density: a MAC budget, but "
                             "target mode='latency' sets the budget "
                             '(target.ratio / target.ms); give one of them '
                             '(amc_cfg.target_density=None)')
        self.amc = amc
        self.amc_raw = amc_raw
        self.metric = dict(type='amc', pruning_method=amc['pruning_method'],
                           protocol=amc['protocol'])
        if reward_data not in _REWARD_DATA:
            raise ValueError(f'model.reward_data: must be one of '
                             f'{_REWARD_DATA}, got {reward_data!r}')
        for key, value in (('calib_batches', calib_batches),
                           ('reward_batches', reward_batches),
                           ('feature_batches', feature_batches)):
            if int(value) < 0 or (key == 'reward_batches' and value < 1):
                raise ValueError(f'model.{key}: must be >= '
                                 f'{1 if key == "reward_batches" else 0}, '
                                 f'got {value}')
        self.network = list(network) if network else None
        self.calib_batches = int(calib_batches)
        self.reward_batches = int(reward_batches)
        self.reward_data = reward_data
        self.feature_batches = int(feature_batches)
        self.latency = dict(latency or {})
        unknown = set(self.latency) - {'run', 'cmd', 'repeats'}
        if unknown:
            raise KeyError(f'model.latency: unknown keys {sorted(unknown)} '
                           "(allowed: run, cmd, repeats)")
        self.seed = int(seed)
        self.ckpt_prefix = ckpt_prefix
        self.work_dir: str | None = None     # set by AMCPruningHook
        self.val_loader = None               # set by AMCPruningHook
        self.history: list[dict] = []

    @classmethod
    def check_target(cls, target: dict) -> dict:
        if isinstance(target, dict) and target.get('mode') == 'latency':
            # the DDPG agent picks the widths: no sampling or calibration
            return check_latency_config(target, 'target')
        return super().check_target(target)

    # -- data -----------------------------------------------------------------------
    def _cache(self, loader, skip: int, num: int) -> list:
        res = []
        for batch in itertools.islice(loader, skip, skip + num):
            inputs, labels = to_tensors(self, batch, 'AMCPruning')
            res.append((inputs.detach(), labels.detach()))
        return res

    def _val_fn(self, batches):
        def val(model):
            logits = []

            def fwd(m, x):
                out = m(x, mode='tensor')
                out = out[-1] if isinstance(out, (tuple, list)) else out
                logits.append(out.detach())
                return out
            top1 = evaluate_top1(model, batches, forward=fwd)
            lg = torch.cat(logits).float()
            lb = torch.cat([y for _, y in batches]).to(lg.device)
            k = min(5, lg.shape[1])
            top5 = 100.0 * float((lg.topk(k, 1).indices == lb[:, None])
                                 .any(1).float().mean())
            return {'ind1': top1, 'ind2': top5,
                    'vloss': float(F.cross_entropy(lg, lb))}
        return val

    def _fingerprint(self) -> str:
        key = json.dumps({'amc_cfg': self.amc_raw, 'network': self.network,
                          'init_checkpoint': self.init_checkpoint,
                          'calib': self.calib_batches,
                          'reward': [self.reward_batches, self.reward_data],
                          'features': self.feature_batches,
                          'seed': self.seed, **({'target': self.target}
                                                if self.target['mode'] ==
                                                'latency' else {})},
                         sort_keys=True)
        return hashlib.sha1(key.encode()).hexdigest()

    # -- pruning ----------------------------------------------------------------------
    def prune(self, batches: Iterable, step: int = 1) -> dict:
        """Run (or reuse) the AMC search and mask the best episode."""
        if self.work_dir is None:
            raise RuntimeError('AMCPruning needs AMCPruningHook '
                               "(custom_hooks=[dict(type='AMCPruningHook')])")
        marker = osp.join(self.work_dir, 'amc_search.json')
        done = self._finished_search(marker)
        if done is not None:
            print_log(f"reusing the AMC search of {marker} (best episode "
                      f"{done['best']['episode']})", logger='current')
        else:
            # one search (rank 0); every rank then reads its result
            if get_rank() == 0:
                done = self._search(batches)
            if is_distributed():
                barrier()
            if done is None:
                done = self._finished_search(marker, quiet=True)
            if done is None:
                raise RuntimeError(f'{marker}: no finished AMC search (rank 0 '
                                   'did not write it; is the work dir shared?)')
        with open(osp.join(self.work_dir, 'amc_best_subnet.json')) as f:
            spaces = json.load(f)['spaces']
        subnet = {n: torch.tensor(e['kept'], dtype=torch.long)
                  for n, e in spaces.items()}
        state = safe_load(osp.join(self.work_dir, 'amc_best_state.pth'))
        self.architecture.load_state_dict(state)
        self.pruner.set_subnet(subnet)
        self.step = step
        self.report['amc'] = {k: v for k, v in done.items()
                              if k != 'fingerprint'}
        flops = self.pruner.estimate_flops(self.pruner.subnet)
        print_log(f"AMC best episode {done['best']['episode']}: ind1 "
                  f"{done['best']['ind1']:.2f}, FLOPs {flops / 1e6:.2f} M of "
                  f'{self.pruner.original_flops / 1e6:.2f} M',
                  logger='current')
        return self.pruner.subnet

    def _finished_search(self, marker: str, quiet: bool = False
                         ) -> dict | None:
        """The marker of a finished search with the same settings."""
        if not osp.isfile(marker):
            return None
        with open(marker) as f:
            done = json.load(f)
        if done.get('fingerprint') != self._fingerprint():
            if not quiet:
                print_log(f'{marker} is from other settings: searching again',
                          logger='current', level=30)
            return None
        return done

    def _search(self, batches) -> dict:
        t0 = time.perf_counter()
        amc = self.amc
        calib = self._cache(batches, 0, self.calib_batches)
        if self.reward_data == 'train':
            reward = self._cache(batches, self.calib_batches,
                                 self.reward_batches)
        else:
            if self.val_loader is None:
                raise RuntimeError("model.reward_data='val' needs "
                                   'AMCPruningHook (it passes the val loader)')
            reward = self._cache(self.val_loader, 0, self.reward_batches)
        if not reward:
            raise ValueError('model.reward_batches: the loader gave no '
                             'batches')
        device = reward[0][0].device
        self.pruner.example_inputs = tuple(
            x.to(device) if isinstance(x, torch.Tensor) else x
            for x in self.pruner.example_inputs)
        feats = calib[:self.feature_batches] or reward[:self.feature_batches]

        @torch.no_grad()
        def feature_fn(model):
            training = model.training
            model.eval()
            try:
                for x, _ in feats:
                    model(x, mode='tensor')
            finally:
                model.train(training)

        def calib_fn(model):
            recalibrate_bn(model, calib, len(calib))

        latency_fn = None
        if self.latency.get('run'):
            latency_fn = LatencyProvider(self.pruner.example_inputs,
                                         self.latency.get('cmd'),
                                         self.latency.get('repeats', 10),
                                         where='model.latency.cmd')
        state_path = osp.join(self.work_dir, 'amc_best_state.pth')

        def on_best(ep, info):
            # masked-mode weights of the new best (reconstructed weights,
            # recalibrated BN) before the next reset restores them
            atomic_torch_save(state_path, {
                k: v.detach().cpu().clone()
                for k, v in self.architecture.state_dict().items()})
            self.pruner.save_subnet(
                osp.join(self.work_dir, 'amc_best_subnet.json'),
                weights=False)

        result = run_amc(
            self.pruner, amc, self._val_fn(reward), self.work_dir,
            self.ckpt_prefix, layers=self.network, feature_fn=feature_fn,
            calib_fn=calib_fn if calib else None, latency_fn=latency_fn,
            seed=self.seed, where='model.network',
            ckpt_subdir='amc_checkpoints', on_best=on_best,
            summary_file='amc_search.json',
            summary_extra={'fingerprint': self._fingerprint()}, t_start=t0,
            latency_budget=LatencyObjective(self.pruner, self.target)
            if self.target['mode'] == 'latency' else None)
        self.history = result.history
        return result.summary
