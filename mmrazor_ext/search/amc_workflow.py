"""The AMC workflow: one function for every entry point.

:func:`run_amc` is the whole search used by the ``AMCPruning`` algorithm
(``tools/train.py`` configs) and by the Knight-MC facade
``MCPruning.prune_model``: it builds the :class:`~.amc_env.AMCEnv` from a
parsed ``amc_cfg`` (:func:`~.amc_search.parse_amc_cfg`), evaluates the
dense model, trains the :class:`~.ddpg.DDPGAgent` with
:func:`run_amc_search`, keeps the best ``save_top_k`` episodes as
checkpoints with ``kmc-pruning.csv`` / ``amc-episodes.csv``
(:class:`~.amc_search.KMCRecorder`) and writes a JSON summary. The model
is given back unchanged (no masks, original weights).
"""
from __future__ import annotations

import os.path as osp
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mmengine.logging import print_log
from torch import nn

from mmrazor_ext.utils.io import atomic_write_json

from .amc_env import AMCEnv
from .amc_search import KMCRecorder, episode_meta, save_pruned_checkpoint
from .ddpg import DDPGAgent

__all__ = ['AMCSearchResult', 'run_amc', 'run_amc_search']


def run_amc_search(env, agent, warmup: int | None = None,
                   episodes: int | None = None,
                   callback: Callable[[int, dict], None] | None = None,
                   logger: str = 'current') -> list[dict]:
    """Warm-up episodes, then training episodes with policy updates.

    Every step of an episode is stored with the episode's final reward (AMC);
    after each training episode the agent makes one update per step. The
    exploration std is ``agent.noise(episode)``, times the linear
    ``epsilon`` decay (:meth:`DDPGConfig.noise_scale`) of the training
    steps taken so far.

    Args:
        env: An environment with ``reset()``, ``step(a)`` and ``state_dim``.
        agent: A :class:`~mmrazor_ext.search.ddpg.DDPGAgent`.
        warmup: Warm-up episodes (default ``agent.cfg.warmup``).
        episodes: Training episodes (default
            ``agent.cfg.num_training_episodes``).
        callback: ``callback(episode, info)`` after every episode (``info``
            of the last step).
        logger: mmengine logger for progress lines.

    Returns:
        Per-episode summaries ``{episode, reward, strategy, noise (std of
        its first action), seconds, ...}``.
    """
    cfg = agent.cfg
    warmup = cfg.warmup if warmup is None else int(warmup)
    episodes = cfg.num_training_episodes if episodes is None \
        else int(episodes)
    history = []
    total = warmup + episodes
    train_steps = 0
    t_start = time.perf_counter()
    for ep in range(total):
        t0 = time.perf_counter()
        state = env.reset()
        warm = ep < warmup
        base = cfg.heatup_noise if warm else cfg.training_noise(ep - warmup)
        traj, done, info, first_std = [], False, {}, None
        while not done:
            std = base if warm else base * cfg.noise_scale(train_steps)
            first_std = std if first_std is None else first_std
            action = agent.explore(state, std)
            train_steps += 0 if warm else 1
            nxt, _, done, info = env.step(action)
            traj.append((state, info['action'], nxt, done))
            state = nxt
        reward = float(info['reward'])
        for s, a, s2, d in traj:
            agent.observe(s, a, reward, s2, d)
        if not warm:
            for _ in traj:
                agent.update()
        summary = {k: v for k, v in info.items()
                   if k not in ('model', 'subnet')}
        summary.update(episode=ep, noise=first_std, warmup=warm,
                       seconds=time.perf_counter() - t0)
        history.append(summary)
        if callback is not None:
            callback(ep, info)
        best = max(history, key=lambda h: h['reward'])
        extra = ''
        if 'ind1' in info:
            extra = (f", ind1 {info['ind1']:.2f}, MACs "
                     f"{info['normalized_macs']:.1f} %")
        print_log(f'AMC episode {ep + 1}/{total} '
                  f"({'warm-up' if warm else 'train'}): reward "
                  f'{reward:.4f}{extra}; best {best["reward"]:.4f} (episode '
                  f'{best["episode"]}); {time.perf_counter() - t_start:.0f} s',
                  logger=logger)
    return history


@dataclass
class AMCSearchResult:
    """What :func:`run_amc` returns.

    Attributes:
        summary: The dict written to the summary JSON.
        history: Per-episode summaries of :func:`run_amc_search`.
    """

    summary: dict
    history: list[dict] = field(default_factory=list)


def run_amc(pruner, amc: Mapping[str, Any],
            val_fn: Callable[[nn.Module], Mapping], output_dir: str,
            ckpt_prefix: str, *, layers: Sequence[str] | None = None,
            feature_fn: Callable | None = None,
            calib_fn: Callable | None = None,
            latency_fn: Callable | None = None, seed: int = 0,
            where: str = 'network', ckpt_subdir: str = '',
            on_best: Callable[[int, dict], None] | None = None,
            summary_file: str = 'amc-summary.json',
            summary_extra: Mapping[str, Any] | None = None,
            t_start: float | None = None,
            latency_budget=None) -> AMCSearchResult:
    """Run one AMC search on ``pruner.model`` and record its results.

    Args:
        pruner: :class:`~mmrazor_ext.pruners.ChannelPruner` of the model.
        amc: A parsed ``amc_cfg`` (:func:`~.amc_search.parse_amc_cfg`).
        val_fn: ``val_fn(model) -> {'ind1', 'ind2', 'vloss'}`` (percent).
        output_dir: Where the CSV files, checkpoints and summary go.
        ckpt_prefix: Name prefix of the episode checkpoints.
        layers: Knight ``network`` layer list (None: every space).
        feature_fn: Forward passes sampled by fm-reconstruction (default
            ``val_fn``).
        calib_fn: Called on the masked model before every ``val_fn`` (e.g.
            BN recalibration).
        latency_fn: ``latency_fn(model) -> (ms, op_num)`` (e.g.
            :class:`~.amc_search.LatencyProvider`).
        seed: Seed of the environment's sampling.
        where: Config field of ``layers`` in error messages.
        ckpt_subdir: Checkpoints go to ``output_dir/ckpt_subdir``.
        on_best: ``on_best(episode, info)`` when an episode becomes the best
            one, while the model still holds its masks and weights.
        summary_file: Name of the summary JSON in ``output_dir``; written
            last, so it marks a finished search.
        summary_extra: Extra summary entries.
        t_start: ``time.perf_counter()`` of the caller's start (default:
            now) for ``seconds`` and ``episodes_per_minute``.
        latency_budget: A :class:`~.latency_objective.LatencyObjective`
            with a budget: the episodes are clamped to the latency table's
            estimate instead of ``target_density`` (see :class:`AMCEnv`).

    Returns:
        :class:`AMCSearchResult`: the summary (dense metrics, best episode,
        csv and best checkpoint paths, timing, settings) and the history.
    """
    t0 = time.perf_counter() if t_start is None else t_start
    env = AMCEnv(
        pruner, val_fn, layers=layers, target_density=amc['target_density'],
        action_range=amc['action_range'],
        pruning_method=amc['pruning_method'],
        n_points_per_fm=amc['n_points_per_fm'],
        group_size=amc['group_size'], protocol=amc['protocol'],
        feature_fn=feature_fn, calib_fn=calib_fn, latency_fn=latency_fn,
        latency_weight=amc['latency_weight'], seed=seed, where=where,
        latency_budget=latency_budget)
    try:
        dense = env.evaluate_dense()
        print_log(f"dense model: ind1 {dense['ind1']:.2f}, ind2 "
                  f"{dense['ind2']:.2f}, {env.dense_macs / 1e6:.2f} M "
                  f'MACs; {len(env.decisions)} decisions, target '
                  f'{"latency" if latency_budget else "density"} '
                  f'{env.target_density:.4g}', logger='current')
        agent = DDPGAgent(env.state_dim, amc['ddpg_cfg'],
                          amc['action_range'])

        def save(path, info):
            save_pruned_checkpoint(path, info['model'], pruner,
                                   info['subnet'], episode_meta(info))

        recorder = KMCRecorder(output_dir, ckpt_prefix, amc['save_top_k'],
                               save, ckpt_subdir=ckpt_subdir)

        def callback(ep, info):
            recorder(ep, info)
            best = recorder.best
            if on_best is not None and best is not None and \
                    best['episode'] == ep:
                on_best(ep, info)

        history = run_amc_search(env, agent, callback=callback)
    finally:
        env.close()
    seconds = time.perf_counter() - t0
    best = recorder.best
    summary = {
        'dense': dense, 'dense_macs': env.dense_macs,
        'dense_params': env.dense_params,
        'dense_latency_ms': env.dense_latency,
        'episodes': len(history), 'seconds': round(seconds, 2),
        'episodes_per_minute': round(60 * len(history) / seconds, 3),
        'csv': recorder.csv_path,
        'best': dict(best) if best else None,
        'best_checkpoint': osp.join(output_dir, best['ckpt_name'])
        if best else None,
        'protocol': amc['protocol'],
        'pruning_method': amc['pruning_method'],
        # the latency budget's keep ratio when there is one
        'target_density': env.target_density,
    }
    if latency_budget is not None:
        # the budget; the best episode's estimate is in summary['best']
        summary['latency_budget'] = {
            k: v for k, v in latency_budget.summary({}).items()
            if not k.startswith('estimated')}
    summary.update(summary_extra or {})
    atomic_write_json(osp.join(output_dir, summary_file), summary, indent=2,
                      default=str)
    print_log(f'AMC search done: {len(history)} episodes in {seconds:.0f} s;'
              f' best {summary["best_checkpoint"]}', logger='current')
    return AMCSearchResult(summary, history)
