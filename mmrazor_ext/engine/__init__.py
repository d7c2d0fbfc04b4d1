from .checkpoint import add_safe_globals, safe_globals, safe_load
from .hooks import *  # noqa: F401,F403
from .runner import Runner
from .schedulers import OneCycleLR

__all__ = ['OneCycleLR', 'Runner', 'add_safe_globals', 'safe_globals', 'safe_load']
