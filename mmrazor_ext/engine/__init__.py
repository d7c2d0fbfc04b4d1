"""Every Runner plug-in: hooks, loops, the LR schedule, the Runner itself
and safe checkpoint loading for every scheme."""
from .checkpoint import (
    CheckpointMismatchError,
    UnsafeCheckpointError,
    add_safe_globals,
    load_model_state,
    safe_globals,
    safe_load,
)
from .config_checks import ConfigFieldError, check_config
from .hooks import (
    AMCPruningHook,
    PruningHook,
    RandomStateHook,
    SparsityHook,
    SubnetReconstructHook,
)
from .loops.resumable_loop import ResumableEpochBasedTrainLoop
from .runner import Runner, adapt_to_device, build_runner
from .schedulers import OneCycleLR

__all__ = [
    'CheckpointMismatchError', 'ConfigFieldError', 'OneCycleLR',
    'ResumableEpochBasedTrainLoop', 'Runner', 'UnsafeCheckpointError',
    'adapt_to_device', 'add_safe_globals', 'build_runner', 'check_config',
    'load_model_state', 'safe_globals', 'safe_load',
    'AMCPruningHook', 'PruningHook', 'RandomStateHook', 'SparsityHook',
    'SubnetReconstructHook'
]
