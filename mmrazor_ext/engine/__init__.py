from .checkpoint import add_safe_globals, safe_globals, safe_load
from .schedulers import OneCycleLR
from .hooks import *  # noqa: F401,F403

__all__ = ['OneCycleLR', 'add_safe_globals', 'safe_globals', 'safe_load']
