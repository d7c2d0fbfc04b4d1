"""Search: adaptive-BN evaluation, Optuna searchers, the AMC agent."""
from .amc_env import AMCEnv, check_val_result, run_amc_search
from .amc_rewards import PROTOCOLS, compute_reward
from .amc_search import (
    KMCRecorder,
    LatencyProvider,
    parse_amc_cfg,
    rebuild_pruned,
    save_pruned_checkpoint,
)
from .ddpg import DDPGAgent, DDPGConfig
from .evaluator import AdaptiveBNEvaluator, bn_state, load_bn_state
from .optuna_searcher import OptunaSearcher, pareto_front, ratio_grid
from .space import KeepRatioSpace

__all__ = ['AdaptiveBNEvaluator', 'KeepRatioSpace', 'OptunaSearcher',
           'bn_state', 'load_bn_state', 'pareto_front', 'ratio_grid']
__all__ += ['AMCEnv', 'DDPGAgent', 'DDPGConfig', 'KMCRecorder',
            'LatencyProvider', 'PROTOCOLS', 'check_val_result',
            'compute_reward', 'parse_amc_cfg', 'rebuild_pruned',
            'run_amc_search', 'save_pruned_checkpoint']
