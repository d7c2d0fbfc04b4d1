"""The AMC pruning hook is an engine hook (engine/hooks/amc_hook.py)."""


def test_amc_hook_is_an_engine_hook():
    from mmrazor_ext.engine.hooks import AMCPruningHook
    from mmrazor_ext.registry import HOOKS
    assert HOOKS.get('AMCPruningHook') is AMCPruningHook
    assert 'PruningHook' in [c.__name__ for c in AMCPruningHook.__mro__]
    assert AMCPruningHook.__module__ == 'mmrazor_ext.engine.hooks.amc_hook'
