"""DDPG agent for AMC (Lillicrap et al. 2016; He et al. 2018).

A deterministic actor ``mu(s) -> keep ratio`` and a critic ``Q(s, a)``
(MLPs with ``hidden1`` / ``hidden2`` ReLU units), each with a target copy
that follows it by soft updates (``tau``). Transitions go to a replay buffer;
every training episode does one critic + actor update per step of the
episode on a random batch of ``bsize`` transitions.

Exploration: during the ``warmup`` (heat-up) episodes the agent is not
trained and acts with truncated-normal noise of standard deviation
``heatup_noise`` around its (random) actor; during the
``num_training_episodes`` that follow the standard deviation starts at
``initial_training_noise`` and is multiplied by ``training_noise_decay``
after every episode. ``init_delta`` / ``delta_decay`` are AMC's names of the
same two numbers and are used when the Distiller-style names are absent.
The noise is truncated to ``action_range``.

``epsilon`` is the linear exploration decay of the usual PyTorch DDPG
code (a factor that starts at 1 and drops by ``1 / epsilon`` per training
action): the std of the ``n``-th action of the training episodes (counted
over all of them, warm-up excluded) is multiplied by
``max(0, 1 - n / epsilon)``, so exploration fades out after ``epsilon``
training steps. ``epsilon = 0`` (the default) turns it off. Knight's
template value 50000 barely matters in a normal search: after 300 episodes
of 20 decisions the factor is still 0.88.

Rewards are centred by a moving average of the sampled batch means
(``moving_alpha``), which only shifts Q by a constant but keeps the critic's
targets small. ``window_length`` must be 1 (one state per step).

Everything random (network initialisation, replay sampling, noise) comes
from ``seed``, so a run on CPU is reproducible.
"""
from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ['DDPGAgent', 'DDPGConfig', 'ReplayBuffer', 'truncated_normal']


@dataclasses.dataclass
class DDPGConfig:
    """DDPG hyper-parameters (the keys of Knight's ``ddpg_cfg``).

    Attributes:
        bsize: Update batch size.
        tau: Soft-update rate of the target networks.
        discount: Discount of the bootstrapped critic target.
        epsilon: Training steps over which the exploration noise decays
            linearly to 0 (0: no linear decay; see module doc).
        init_delta: AMC name of ``initial_training_noise``.
        delta_decay: AMC name of ``training_noise_decay``.
        hidden1: Units of the first hidden layer (actor and critic).
        hidden2: Units of the second hidden layer.
        window_length: States per observation; only 1 is supported.
        heatup_noise: Noise std during warm-up episodes.
        initial_training_noise: Noise std of the first training episode.
        training_noise_decay: Per-episode decay of the training noise.
        warmup: Warm-up (heat-up) episodes: explore, no updates.
        num_training_episodes: Episodes with policy updates.
        lr_a: Actor learning rate (Adam).
        lr_c: Critic learning rate (Adam).
        rmsize: Replay buffer capacity (transitions).
        moving_alpha: Rate of the reward moving-average baseline.
        seed: Seed of everything random in the agent.
    """

    bsize: int = 64
    tau: float = 0.01
    discount: float = 1.0
    epsilon: float = 0.0
    init_delta: float = 0.5
    delta_decay: float = 0.95
    hidden1: int = 300
    hidden2: int = 300
    window_length: int = 1
    heatup_noise: float = 0.5
    initial_training_noise: float = 0.5
    training_noise_decay: float = 0.95
    warmup: int = 100
    num_training_episodes: int = 300
    lr_a: float = 1e-4
    lr_c: float = 1e-3
    rmsize: int = 100000
    moving_alpha: float = 0.5
    seed: int = 0

    _INTS = ('bsize', 'hidden1', 'hidden2', 'window_length', 'warmup',
             'num_training_episodes', 'rmsize', 'seed')

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any] | None,
                  where: str = 'amc_cfg.ddpg_cfg') -> DDPGConfig:
        """Validate a ``ddpg_cfg`` dict; errors name ``where.key``.

        ``init_delta`` / ``delta_decay`` fill ``initial_training_noise`` /
        ``training_noise_decay`` when those are not given.
        """
        cfg = dict(cfg or {})
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key, value in cfg.items():
            if key not in fields:
                raise KeyError(f'{where}.{key}: unknown key; allowed keys: '
                               f'{", ".join(fields)}')
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f'{where}.{key}: must be a number, got '
                                 f'{value!r}')
            if key in cls._INTS and float(value) != int(value):
                raise ValueError(f'{where}.{key}: must be an integer, got '
                                 f'{value!r}')
        for new, old in (('initial_training_noise', 'init_delta'),
                         ('training_noise_decay', 'delta_decay')):
            if old in cfg and new not in cfg:
                cfg[new] = cfg[old]
            elif old in cfg and new in cfg and cfg[old] != cfg[new]:
                warnings.warn(f'{where}: {new}={cfg[new]} overrides {old}='
                              f'{cfg[old]} (two names of one setting)',
                              stacklevel=2)
        kwargs = {k: (int(v) if k in cls._INTS else float(v))
                  for k, v in cfg.items()}
        res = cls(**kwargs)
        res.check(where)
        return res

    def check(self, where: str = 'amc_cfg.ddpg_cfg') -> None:
        positive = ('bsize', 'hidden1', 'hidden2', 'rmsize', 'lr_a', 'lr_c')
        for key in positive:
            if getattr(self, key) <= 0:
                raise ValueError(f'{where}.{key}: must be > 0, got '
                                 f'{getattr(self, key)}')
        for key in ('warmup', 'num_training_episodes', 'heatup_noise',
                    'initial_training_noise', 'discount', 'epsilon'):
            if getattr(self, key) < 0:
                raise ValueError(f'{where}.{key}: must be >= 0, got '
                                 f'{getattr(self, key)}')
        for key in ('tau', 'moving_alpha'):
            if not 0 < getattr(self, key) <= 1:
                raise ValueError(f'{where}.{key}: must be in (0, 1], got '
                                 f'{getattr(self, key)}')
        if not 0 < self.training_noise_decay <= 1:
            raise ValueError(f'{where}.training_noise_decay: must be in '
                             f'(0, 1], got {self.training_noise_decay}')
        if self.warmup + self.num_training_episodes < 1:
            raise ValueError(f'{where}: warmup + num_training_episodes must '
                             'be >= 1 (no episode would run)')
        if self.window_length != 1:
            raise ValueError(f'{where}.window_length: only 1 is supported, '
                             f'got {self.window_length}')

    def training_noise(self, episode: int) -> float:
        """Noise std of training episode ``episode`` (0 = first one)."""
        return self.initial_training_noise * \
            self.training_noise_decay ** max(int(episode), 0)

    def noise_scale(self, steps: int) -> float:
        """Linear decay factor (``epsilon``) of the noise after ``steps``
        training steps: ``max(0, 1 - steps / epsilon)``, 1 when off."""
        if self.epsilon <= 0:
            return 1.0
        return max(0.0, 1.0 - int(steps) / self.epsilon)


def truncated_normal(rng: np.random.Generator, mean: float, std: float,
                     low: float, high: float) -> float:
    """One sample of N(mean, std) truncated to [low, high] (inverse CDF)."""
    mean = float(mean)
    if std <= 0:
        return float(min(max(mean, low), high))
    lo = torch.special.ndtr(torch.tensor((low - mean) / std,
                                         dtype=torch.float64))
    hi = torch.special.ndtr(torch.tensor((high - mean) / std,
                                         dtype=torch.float64))
    if float(hi - lo) < 1e-12:  # the mass is (numerically) all outside
        return float(low if mean < low else high)
    u = lo + (hi - lo) * float(rng.random())
    x = mean + std * float(torch.special.ndtri(u))
    return float(min(max(x, low), high))


class ReplayBuffer:
    """Ring buffer of transitions ``(s, a, r, s', done)``."""

    def __init__(self, capacity: int, state_dim: int):
        self.capacity = int(capacity)
        self.s = np.zeros((capacity, state_dim), np.float32)
        self.a = np.zeros((capacity, 1), np.float32)
        self.r = np.zeros((capacity, 1), np.float32)
        self.s2 = np.zeros((capacity, state_dim), np.float32)
        self.done = np.zeros((capacity, 1), np.float32)
        self.size = 0
        self._next = 0

    def __len__(self) -> int:
        return self.size

    def add(self, s, a, r, s2, done) -> None:
        i = self._next
        self.s[i], self.a[i], self.r[i] = s, a, r
        self.s2[i], self.done[i] = s2, float(done)
        self._next = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, rng: np.random.Generator, n: int):
        idx = rng.choice(self.size, size=min(n, self.size), replace=False)
        return tuple(torch.from_numpy(x[idx])
                     for x in (self.s, self.a, self.r, self.s2, self.done))


class _Actor(nn.Module):
    def __init__(self, state_dim, h1, h2):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(state_dim, h1), nn.ReLU(),
                                 nn.Linear(h1, h2), nn.ReLU(),
                                 nn.Linear(h2, 1))

    def forward(self, s):
        return torch.sigmoid(self.net(s))


class _Critic(nn.Module):
    def __init__(self, state_dim, h1, h2):
        super().__init__()
        self.fs = nn.Linear(state_dim, h1)
        self.fa = nn.Linear(1, h1, bias=False)
        self.net = nn.Sequential(nn.ReLU(), nn.Linear(h1, h2), nn.ReLU(),
                                 nn.Linear(h2, 1))

    def forward(self, s, a):
        return self.net(self.fs(s) + self.fa(a))


def _soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    with torch.no_grad():
        for t, s in zip(target.parameters(), source.parameters()):
            t.mul_(1 - tau).add_(s, alpha=tau)


class DDPGAgent:
    """DDPG actor-critic with a replay buffer and a reward baseline.

    Args:
        state_dim: Length of the state vector.
        cfg: :class:`DDPGConfig` or a ``ddpg_cfg`` dict.
        action_range: ``(low, high)`` of the actions.
    """

    def __init__(self, state_dim: int, cfg: DDPGConfig | Mapping | None = None,
                 action_range: Sequence[float] = (0.05, 0.95)):
        if not isinstance(cfg, DDPGConfig):
            cfg = DDPGConfig.from_dict(cfg)
        self.cfg = cfg
        self.low, self.high = float(action_range[0]), float(action_range[1])
        self.state_dim = int(state_dim)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.actor = _Actor(state_dim, cfg.hidden1, cfg.hidden2)
            self.critic = _Critic(state_dim, cfg.hidden1, cfg.hidden2)
        self.actor_target = copy.deepcopy(self.actor)
        self.critic_target = copy.deepcopy(self.critic)
        self.actor_optim = torch.optim.Adam(self.actor.parameters(),
                                            lr=cfg.lr_a)
        self.critic_optim = torch.optim.Adam(self.critic.parameters(),
                                             lr=cfg.lr_c)
        self.rng = np.random.default_rng(cfg.seed)
        self.memory = ReplayBuffer(cfg.rmsize, state_dim)
        self.baseline: float | None = None
        self.updates = 0

    # -- acting -------------------------------------------------------------------
    @torch.no_grad()
    def act(self, state) -> float:
        """The actor's action for ``state``, clipped to the action range."""
        s = torch.as_tensor(np.asarray(state, np.float32)).reshape(1, -1)
        a = float(self.actor(s))
        return min(max(a, self.low), self.high)

    def explore(self, state, std: float) -> float:
        """Truncated-normal exploration around the actor's action."""
        s = torch.as_tensor(np.asarray(state, np.float32)).reshape(1, -1)
        with torch.no_grad():
            mean = float(self.actor(s))
        return truncated_normal(self.rng, mean, std, self.low, self.high)

    def noise(self, episode: int) -> float:
        """Exploration std of ``episode`` (counting warm-up episodes)."""
        if episode < self.cfg.warmup:
            return self.cfg.heatup_noise
        return self.cfg.training_noise(episode - self.cfg.warmup)

    # -- learning -----------------------------------------------------------------
    def observe(self, state, action: float, reward: float, next_state,
                done: bool) -> None:
        """Store one transition."""
        self.memory.add(np.asarray(state, np.float32), float(action),
                        float(reward), np.asarray(next_state, np.float32),
                        bool(done))

    def update(self) -> dict[str, float]:
        """One critic and one actor step on a replay batch.

        Returns:
            ``{'critic_loss', 'actor_loss', 'baseline'}``.
        """
        if len(self.memory) == 0:
            raise RuntimeError('DDPGAgent.update: the replay buffer is empty')
        cfg = self.cfg
        s, a, r, s2, done = self.memory.sample(self.rng, cfg.bsize)
        mean = float(r.mean())
        self.baseline = mean if self.baseline is None else \
            self.baseline + cfg.moving_alpha * (mean - self.baseline)
        r = r - self.baseline
        with torch.no_grad():
            q_next = self.critic_target(s2, self.actor_target(s2))
            target = r + cfg.discount * (1 - done) * q_next
        critic_loss = F.mse_loss(self.critic(s, a), target)
        self.critic_optim.zero_grad()
        critic_loss.backward()
        self.critic_optim.step()
        actor_loss = -self.critic(s, self.actor(s)).mean()
        self.actor_optim.zero_grad()
        actor_loss.backward()
        self.actor_optim.step()
        _soft_update(self.actor_target, self.actor, cfg.tau)
        _soft_update(self.critic_target, self.critic, cfg.tau)
        self.updates += 1
        return {'critic_loss': critic_loss.item(),
                'actor_loss': actor_loss.item(), 'baseline': self.baseline}

    def state_dict(self) -> dict:
        """Network weights (for inspection or saving the policy)."""
        return {'actor': self.actor.state_dict(),
                'critic': self.critic.state_dict()}
