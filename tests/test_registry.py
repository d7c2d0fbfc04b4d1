"""Registries are mmengine children in scope mmrazor_ext."""
import mmengine.registry as mmreg
from mmengine.registry import DefaultScope

from mmrazor_ext import registry


def test_children_of_mmengine():
    pairs = [(registry.MODELS, mmreg.MODELS), (registry.METRICS, mmreg.METRICS),
             (registry.HOOKS, mmreg.HOOKS), (registry.LOOPS, mmreg.LOOPS),
             (registry.DATASETS, mmreg.DATASETS),
             (registry.PARAM_SCHEDULERS, mmreg.PARAM_SCHEDULERS)]
    for child, parent in pairs:
        assert child.parent is parent
        assert child.scope == 'mmrazor_ext'
        assert parent.children['mmrazor_ext'] is child
    for reg in (registry.PRUNERS, registry.SPARSE_SCHEDULERS,
                registry.MASK_GENERATORS):
        assert reg.scope == 'mmrazor_ext'
    assert registry.ALGORITHMS is registry.MODELS


def test_scoped_lookup_reaches_mmpretrain_and_mmengine():
    registry.register_all_modules()
    assert DefaultScope.get_current_instance().scope_name == 'mmrazor_ext'
    from mmpretrain.models import ImageClassifier
    assert registry.MODELS.get('mmpretrain.ImageClassifier') is ImageClassifier
    # Own components first, then mmengine's through the parent.
    from mmrazor_ext.models import ResNet_CIFAR
    assert registry.MODELS.get('ResNet_CIFAR') is ResNet_CIFAR
    assert registry.HOOKS.get('CheckpointHook') is not None
    from mmrazor_ext.engine import OneCycleLR
    assert registry.PARAM_SCHEDULERS.get('OneCycleLR') is OneCycleLR


def test_runner_plugins_live_in_engine():
    """HOOKS and LOOPS import one engine package each; every hook / loop of
    ours is defined in engine/, and the child registries kept only for scoped
    builds (data samplers, task utils) hold nothing of ours."""
    registry.register_all_modules()
    for reg, package, names in (
            (registry.HOOKS, 'mmrazor_ext.engine.hooks',
             ('PruningHook', 'SparsityHook', 'AMCPruningHook')),
            (registry.LOOPS, 'mmrazor_ext.engine.loops',
             ('AutoSlimSearchLoop', 'HybridSearchLoop'))):
        for name in names:
            assert reg.get(name).__module__.startswith(package + '.'), name
        for name, cls in reg.module_dict.items():
            assert cls.__module__.startswith('mmrazor_ext.engine.'), name
    assert not registry.DATA_SAMPLERS.module_dict
    assert not registry.TASK_UTILS.module_dict
    assert registry.DATA_SAMPLERS.parent is mmreg.DATA_SAMPLERS
    assert registry.TASK_UTILS.parent is mmreg.TASK_UTILS
