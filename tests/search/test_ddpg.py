"""The DDPG agent on a synthetic reward (search/ddpg.py,
search/amc_workflow.py)."""
import numpy as np
import pytest


class _PeakEnv:
    """Four steps; the episode reward peaks when every action is 0.7."""

    state_dim = 3

    def reset(self):
        self.t, self.actions = 0, []
        return self._state(1.0)

    def _state(self, prev):
        return np.array([min(self.t, 3) / 3, 0.5, prev], np.float32)

    def step(self, a):
        self.actions.append(a)
        self.t += 1
        info = {'action': a}
        if self.t < 4:
            return self._state(a), 0.0, False, info
        info['reward'] = 1 - 4 * float(np.mean((np.array(self.actions) -
                                                0.7) ** 2))
        return self._state(a), info['reward'], True, info


def _train_peak(warmup, episodes, seed=2):
    from mmengine.logging import MMLogger

    from mmrazor_ext.search import DDPGAgent, run_amc_search
    MMLogger.get_instance('amc_test_quiet', log_level='WARNING')
    env = _PeakEnv()
    agent = DDPGAgent(env.state_dim, dict(
        bsize=64, tau=0.01, discount=1.0, hidden1=64, hidden2=64,
        warmup=warmup, num_training_episodes=episodes, lr_a=1e-3, lr_c=1e-3,
        seed=seed), (0.05, 0.95))
    history = run_amc_search(env, agent, logger='amc_test_quiet')
    state, actions = env.reset(), []
    for _ in range(4):
        actions.append(agent.act(state))
        state, _, _, _ = env.step(actions[-1])
    return agent, history, actions


def test_ddpg_learns_a_synthetic_reward():
    agent, history, actions = _train_peak(20, 150)
    assert len(history) == 170 and agent.updates == 150 * 4
    assert max(abs(a - 0.7) for a in actions) < 0.1, actions
    # the warm-up explores widely, the trained policy is near the optimum
    assert np.mean([h['reward'] for h in history[-10:]]) > 0.98


def test_ddpg_is_deterministic_and_checks_config():
    from mmrazor_ext.search import DDPGConfig
    a = _train_peak(3, 5)[2]
    b = _train_peak(3, 5)[2]
    assert a == b
    cfg = DDPGConfig.from_dict({'init_delta': 0.3, 'delta_decay': 0.9,
                                'epsilon': 50000})
    assert cfg.initial_training_noise == 0.3
    assert cfg.training_noise(2) == pytest.approx(0.3 * 0.81)
    with pytest.raises(KeyError, match='amc_cfg.ddpg_cfg.hiden1'):
        DDPGConfig.from_dict({'hiden1': 3})
    with pytest.raises(ValueError, match='amc_cfg.ddpg_cfg.tau'):
        DDPGConfig.from_dict({'tau': 0})
    with pytest.raises(ValueError, match='window_length'):
        DDPGConfig.from_dict({'window_length': 4})


def test_epsilon_decays_the_exploration_noise_linearly():
    from mmengine.logging import MMLogger

    from mmrazor_ext.search import DDPGAgent, DDPGConfig, run_amc_search
    cfg = DDPGConfig.from_dict({'epsilon': 10})
    assert [cfg.noise_scale(n) for n in (0, 5, 10, 20)] == [1, 0.5, 0, 0]
    assert DDPGConfig().noise_scale(10 ** 6) == 1  # default: off
    with pytest.raises(ValueError, match='amc_cfg.ddpg_cfg.epsilon'):
        DDPGConfig.from_dict({'epsilon': -1})

    class Env(_PeakEnv):
        """Records (executed action, the actor's action) of every step."""

        def step(self, a):
            self.log.append((a, self.agent.act(self.state)))
            self.state, r, done, info = super().step(a)
            return self.state, r, done, info

        def reset(self):
            self.log = []
            self.state = super().reset()
            return self.state

    MMLogger.get_instance('amc_test_quiet', log_level='WARNING')
    env = Env()
    # 1 warm-up episode, then 3 training episodes of 4 steps; epsilon = 6
    # training steps: the last episode explores with no noise at all
    agent = DDPGAgent(env.state_dim, dict(
        bsize=4, hidden1=8, hidden2=8, warmup=1, num_training_episodes=3,
        heatup_noise=0.3, initial_training_noise=0.4,
        training_noise_decay=0.5, epsilon=6, seed=0), (0.05, 0.95))
    env.agent = agent
    logs = []
    history = run_amc_search(env, agent, logger='amc_test_quiet',
                             callback=lambda ep, info: logs.append(env.log))
    assert [h['noise'] for h in history] == pytest.approx(
        [0.3, 0.4, 0.4 * 0.5 * (1 - 4 / 6), 0.0])
    assert all(a == pytest.approx(mu) for a, mu in logs[3])
    assert any(abs(a - mu) > 1e-3 for a, mu in logs[1])
