"""The search loops are registered in the engine (engine/loops/)."""


def test_search_loops_registered_in_engine():
    from mmrazor_ext.engine.loops import HybridSearchLoop, SearchLoop
    from mmrazor_ext.registry import LOOPS
    assert LOOPS.get('HybridSearchLoop') is HybridSearchLoop
    assert issubclass(HybridSearchLoop, SearchLoop)


def test_search_loop_registered_in_engine():
    from mmrazor_ext.engine.loops import AutoSlimSearchLoop, SearchLoop
    from mmrazor_ext.registry import LOOPS
    assert LOOPS.get('AutoSlimSearchLoop') is AutoSlimSearchLoop
    assert issubclass(AutoSlimSearchLoop, SearchLoop)
