"""Search: adaptive-BN evaluation, Optuna searchers, the AMC agent."""
from .amc_env import AMCEnv, check_val_result
from .amc_rewards import PROTOCOLS, compute_reward
from .amc_search import (
    KMCRecorder,
    LatencyProvider,
    parse_amc_cfg,
    rebuild_pruned,
    save_pruned_checkpoint,
)
from .amc_workflow import AMCSearchResult, run_amc, run_amc_search
from .ddpg import DDPGAgent, DDPGConfig
from .evaluator import AdaptiveBNEvaluator, bn_state, load_bn_state
from .greedy import GreedySlimmer, greedy_slim
from .latency_objective import (
    LatencyObjective,
    block_latency_savings,
    block_removal_subnet,
    check_latency_config,
)
from .optuna_searcher import OptunaSearcher, pareto_front, ratio_grid
from .space import KeepRatioSpace

__all__ = ['AdaptiveBNEvaluator', 'GreedySlimmer', 'KeepRatioSpace',
           'OptunaSearcher', 'greedy_slim',
           'bn_state', 'load_bn_state', 'pareto_front', 'ratio_grid']
__all__ += ['AMCEnv', 'AMCSearchResult', 'DDPGAgent', 'DDPGConfig', 'KMCRecorder',
            'LatencyProvider', 'PROTOCOLS', 'check_val_result',
            'compute_reward', 'parse_amc_cfg', 'rebuild_pruned', 'run_amc',
            'run_amc_search', 'save_pruned_checkpoint']
__all__ += ['LatencyObjective', 'block_latency_savings',
            'block_removal_subnet', 'check_latency_config']
