"""Registries of mmrazor_ext: children of mmengine's, scope ``mmrazor_ext``.

With ``default_scope='mmrazor_ext'`` every build in a config looks here first
and then in mmengine's root registries. Components of other OpenMMLab
projects are reached with their scope prefix, e.g.
``dict(type='mmpretrain.ImageClassifier')``.

Importance metrics (``l1``, ``cdp`` ...) live in :data:`METRICS`, a child of
mmengine's evaluation-metric registry; their lower-case names never collide
with evaluation metrics such as ``mmpretrain.Accuracy``.
"""
from mmengine.registry import DATA_SAMPLERS as MMENGINE_DATA_SAMPLERS
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import EVALUATOR as MMENGINE_EVALUATOR
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import LOG_PROCESSORS as MMENGINE_LOG_PROCESSORS
from mmengine.registry import LOOPS as MMENGINE_LOOPS
from mmengine.registry import METRICS as MMENGINE_METRICS
from mmengine.registry import MODEL_WRAPPERS as MMENGINE_MODEL_WRAPPERS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import (
    OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS,
)
from mmengine.registry import OPTIM_WRAPPERS as MMENGINE_OPTIM_WRAPPERS
from mmengine.registry import OPTIMIZERS as MMENGINE_OPTIMIZERS
from mmengine.registry import PARAM_SCHEDULERS as MMENGINE_PARAM_SCHEDULERS
from mmengine.registry import RUNNERS as MMENGINE_RUNNERS
from mmengine.registry import TASK_UTILS as MMENGINE_TASK_UTILS
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import VISBACKENDS as MMENGINE_VISBACKENDS
from mmengine.registry import VISUALIZERS as MMENGINE_VISUALIZERS
from mmengine.registry import WEIGHT_INITIALIZERS as MMENGINE_WEIGHT_INITIALIZERS
from mmengine.registry import Registry

_SCOPE = 'mmrazor_ext'

# --- children of mmengine's root registries --------------------------------
MODELS = Registry(
    'model', parent=MMENGINE_MODELS, scope=_SCOPE,
    locations=['mmrazor_ext.models', 'mmrazor_ext.algorithms',
               'mmrazor_ext.sparsity'])
# Algorithms and fake-sparse wrappers are nn.Modules the Runner (or a model)
# builds through mmengine's MODELS, so they must live in our MODELS child.
ALGORITHMS = MODELS
FAKE_SPARSES = MODELS
# Channel / layer importance metrics (not evaluation metrics).
METRICS = Registry(
    'metric', parent=MMENGINE_METRICS, scope=_SCOPE,
    locations=['mmrazor_ext.metrics'])
# Every Runner plug-in lives in engine/: hooks in one package, loops in
# another.
HOOKS = Registry(
    'hook', parent=MMENGINE_HOOKS, scope=_SCOPE,
    locations=['mmrazor_ext.engine.hooks'])
LOOPS = Registry(
    'loop', parent=MMENGINE_LOOPS, scope=_SCOPE,
    locations=['mmrazor_ext.engine.loops'])
DATASETS = Registry(
    'dataset', parent=MMENGINE_DATASETS, scope=_SCOPE,
    locations=['mmrazor_ext.datasets'])

# The remaining mmengine kinds get a child too, so builds under our scope
# find mmengine's own components through ``parent`` (no fallback warnings).
# Other projects' components keep their prefix: ``mmpretrain.PackInputs``.
# Nothing of ours is registered in them, so they have no ``locations``.
DATA_SAMPLERS = Registry(
    'data sampler', parent=MMENGINE_DATA_SAMPLERS, scope=_SCOPE)
TASK_UTILS = Registry('task util', parent=MMENGINE_TASK_UTILS, scope=_SCOPE)
TRANSFORMS = Registry('transform', parent=MMENGINE_TRANSFORMS, scope=_SCOPE)
OPTIMIZERS = Registry('optimizer', parent=MMENGINE_OPTIMIZERS, scope=_SCOPE)
OPTIM_WRAPPERS = Registry(
    'optim_wrapper', parent=MMENGINE_OPTIM_WRAPPERS, scope=_SCOPE)
OPTIM_WRAPPER_CONSTRUCTORS = Registry(
    'optimizer wrapper constructor',
    parent=MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS, scope=_SCOPE)
PARAM_SCHEDULERS = Registry(
    'parameter scheduler', parent=MMENGINE_PARAM_SCHEDULERS, scope=_SCOPE)
WEIGHT_INITIALIZERS = Registry(
    'weight initializer', parent=MMENGINE_WEIGHT_INITIALIZERS, scope=_SCOPE)
EVALUATOR = Registry('evaluator', parent=MMENGINE_EVALUATOR, scope=_SCOPE)
VISUALIZERS = Registry('visualizer', parent=MMENGINE_VISUALIZERS, scope=_SCOPE)
VISBACKENDS = Registry('vis_backend', parent=MMENGINE_VISBACKENDS, scope=_SCOPE)
LOG_PROCESSORS = Registry(
    'log_processor', parent=MMENGINE_LOG_PROCESSORS, scope=_SCOPE)
MODEL_WRAPPERS = Registry(
    'model_wrapper', parent=MMENGINE_MODEL_WRAPPERS, scope=_SCOPE)
RUNNERS = Registry('runner', parent=MMENGINE_RUNNERS, scope=_SCOPE)

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
