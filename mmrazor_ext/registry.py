"""Registries of mmrazor_ext: children of mmengine's, scope ``mmrazor_ext``.

With ``default_scope='mmrazor_ext'`` every build in a config looks here first
and then in mmengine's root registries. Components of other OpenMMLab
projects are reached with their scope prefix, e.g.
``dict(type='mmpretrain.ImageClassifier')``.

Importance metrics (``l1``, ``cdp`` ...) live in :data:`METRICS`, a child of
mmengine's evaluation-metric registry; their lower-case names never collide
with evaluation metrics such as ``mmpretrain.Accuracy``.
"""
import mmengine.registry as mmengine_registry
from mmengine.registry import Registry

_SCOPE = 'mmrazor_ext'


def _child(name: str, parent: Registry, *locations: str) -> Registry:
    """A child of one of mmengine's root registries, in scope mmrazor_ext,
    whose components are registered on importing ``locations``."""
    return Registry(name, parent=parent, scope=_SCOPE,
                    locations=list(locations))


# --- children of mmengine's root registries --------------------------------
MODELS = _child('model', mmengine_registry.MODELS, 'mmrazor_ext.models',
                'mmrazor_ext.algorithms', 'mmrazor_ext.sparsity')
# Algorithms and fake-sparse wrappers are nn.Modules the Runner (or a model)
# builds through mmengine's MODELS, so they must live in our MODELS child.
ALGORITHMS = MODELS
FAKE_SPARSES = MODELS
# Channel / layer importance metrics (not evaluation metrics).
METRICS = _child('metric', mmengine_registry.METRICS, 'mmrazor_ext.metrics')
# Every Runner plug-in lives in engine/: hooks in one package, loops in
# another.
HOOKS = _child('hook', mmengine_registry.HOOKS, 'mmrazor_ext.engine.hooks')
LOOPS = _child('loop', mmengine_registry.LOOPS, 'mmrazor_ext.engine.loops')
DATASETS = _child('dataset', mmengine_registry.DATASETS,
                  'mmrazor_ext.datasets')

# The remaining mmengine kinds get a child too, so builds under our scope
# find mmengine's own components through ``parent`` (no fallback warnings).
# Other projects' components keep their prefix: ``mmpretrain.PackInputs``.
# Nothing of ours is registered in them, so they have no ``locations``.
DATA_SAMPLERS = _child('data sampler', mmengine_registry.DATA_SAMPLERS)
TASK_UTILS = _child('task util', mmengine_registry.TASK_UTILS)
TRANSFORMS = _child('transform', mmengine_registry.TRANSFORMS)
OPTIMIZERS = _child('optimizer', mmengine_registry.OPTIMIZERS)
OPTIM_WRAPPERS = _child('optim_wrapper', mmengine_registry.OPTIM_WRAPPERS)
OPTIM_WRAPPER_CONSTRUCTORS = _child(
    'optimizer wrapper constructor',
    mmengine_registry.OPTIM_WRAPPER_CONSTRUCTORS)
PARAM_SCHEDULERS = _child('parameter scheduler',
                          mmengine_registry.PARAM_SCHEDULERS)
WEIGHT_INITIALIZERS = _child('weight initializer',
                             mmengine_registry.WEIGHT_INITIALIZERS)
EVALUATOR = _child('evaluator', mmengine_registry.EVALUATOR)
VISUALIZERS = _child('visualizer', mmengine_registry.VISUALIZERS)
VISBACKENDS = _child('vis_backend', mmengine_registry.VISBACKENDS)
LOG_PROCESSORS = _child('log_processor', mmengine_registry.LOG_PROCESSORS)
MODEL_WRAPPERS = _child('model_wrapper', mmengine_registry.MODEL_WRAPPERS)
RUNNERS = _child('runner', mmengine_registry.RUNNERS)

# --- kinds mmengine has no registry for -------------------------------------
# mmengine allows one child per scope under each root, and a build resolves
# the registry of the current scope from the root, so a grandchild is never
# found. These kinds are therefore roots of their own in scope mmrazor_ext;
# only this package's code builds them.
PRUNERS = Registry('pruner', scope=_SCOPE, locations=['mmrazor_ext.pruners'])
SPARSE_SCHEDULERS = Registry(
    'sparse scheduler', scope=_SCOPE, locations=['mmrazor_ext.sparsity'])
MASK_GENERATORS = Registry(
    'mask generator', scope=_SCOPE, locations=['mmrazor_ext.sparsity'])


def register_all_modules(init_default_scope: bool = True) -> None:
    """Import every module that registers something and set the scope.

    Args:
        init_default_scope: Also make ``mmrazor_ext`` the current default
            scope (a new instance is created if another scope is current).
    """
    import mmpretrain.datasets  # noqa: F401  (registers FashionMNIST etc.)
    import mmpretrain.evaluation  # noqa: F401
    import mmpretrain.models  # noqa: F401

    import mmrazor_ext.algorithms  # noqa: F401
    import mmrazor_ext.datasets  # noqa: F401
    import mmrazor_ext.engine  # noqa: F401
    import mmrazor_ext.models  # noqa: F401

    if init_default_scope:
        from mmengine.registry import DefaultScope
        current = DefaultScope.get_current_instance()
        if current is None or current.scope_name != _SCOPE:
            import datetime
            name = f'{_SCOPE}-{datetime.datetime.now()}'
            DefaultScope.get_instance(name, scope_name=_SCOPE)
