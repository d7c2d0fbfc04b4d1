"""``BaseScheduler``: layer selection, fake-sparse attachment and driving.

Schedulers are driven in one of two ways, never both:

* **standalone** (a plain PyTorch loop, as in MSBench): after
  ``set_lr_scheduler(lr_scheduler)`` every ``lr_scheduler.step()`` counts one
  iteration; after ``init_optimizer(optimizer)`` every ``optimizer.step()``
  re-applies masks (and counts iterations when no LR scheduler was given).
* **Runner** (:class:`mmrazor_ext.engine.hooks.SparsityHook`): the hook calls
  :meth:`after_optimizer_step` and :meth:`update` each iteration itself.
"""
import copy
import os
import os.path as osp
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from mmengine.logging import print_log
from torch import nn

from mmrazor_ext.registry import FAKE_SPARSES, MASK_GENERATORS, SPARSE_SCHEDULERS
from mmrazor_ext.utils.io import atomic_torch_save

from .config import (
    LAYER_SELECTION_ARGS,
    Arg,
    SparsityConfigError,
    as_name_list,
    check_shape,
    validate_kwargs,
)
from .fake_sparse import FakeSparse
from .sparse_modules import (
    SPARSIFIABLE,
    attach_fake_sparse,
    dense_weight,
    iter_sparse_layers,
)


def note(msg: str, level: str = 'INFO') -> None:
    import logging
    print_log(msg, logger='current', level=getattr(logging, level))


def resolve_leaf_modules(model: nn.Module,
                         leaf_module: Iterable[Any]) -> tuple[list, list]:
    """Map the seed's ``leaf_module`` entries to tracer leaves.

    Entries may be module classes, class names (``'Space2Depth'``, as in the
    MSBench configs) or qualified module names. Class names that no module
    of ``model`` has are reported and ignored (configs are shared between
    models).

    Returns:
        ``(leaves for trace_model, unmatched names)``.
    """
    leaves, unmatched = [], []
    classes = {type(m).__name__: type(m) for m in model.modules()}
    names = {n for n, _ in model.named_modules()}
    for item in leaf_module:
        if isinstance(item, type):
            leaves.append(item)
        elif item in classes:
            leaves.append(classes[item])
        elif item in names:
            leaves.append(item)
        else:
            unmatched.append(item)
    return leaves, unmatched


def layer_leaves(model: nn.Module) -> list[type]:
    """Conv / linear classes of ``model`` as tracer leaves: subclasses from
    other packages (mmcv wrappers, prepared ``Sparse*`` layers) would
    otherwise be traced through and appear as bare ``conv2d`` calls."""
    return sorted({type(m) for m in model.modules()
                   if isinstance(m, SPARSIFIABLE)}, key=lambda c: c.__name__)


def discover_layers(model: nn.Module, leaf_module: Iterable[Any] = (),
                    concrete_args: dict | None = None,
                    example_inputs: Any = None) -> list[str]:
    """Qualified names of the conv / linear layers the traced forward calls.

    Uses the project's single tracer; layers inside ``leaf_module`` modules
    or never called by ``forward`` are not returned. With
    ``example_inputs``, a model torch.fx cannot trace symbolically (Python
    branches on sizes) is traced with them.
    """
    from mmrazor_ext.graph import trace_model

    leaves, unmatched = resolve_leaf_modules(model, leaf_module)
    if unmatched:
        note(f'leaf_module entries not found in the model (ignored): '
             f'{unmatched}', 'WARNING')
    gm = trace_model(model, leaf_modules=leaves + layer_leaves(model),
                     concrete_args=concrete_args,
                     example_inputs=example_inputs)
    found, seen = [], set()
    for node in gm.graph.nodes:
        if node.op != 'call_module' or node.target in seen:
            continue
        seen.add(node.target)
        mod = model.get_submodule(node.target)
        if isinstance(mod, SPARSIFIABLE):
            found.append(node.target)
    return found


def _iter_schedulers(lr_scheduler) -> list[Any]:
    if lr_scheduler is None:
        return []
    if isinstance(lr_scheduler, dict):
        out = []
        for v in lr_scheduler.values():
            out.extend(_iter_schedulers(v))
        return out
    if isinstance(lr_scheduler, (list, tuple)):
        out = []
        for v in lr_scheduler:
            out.extend(_iter_schedulers(v))
        return out
    return [lr_scheduler]


def _optimizer_of(lr_scheduler):
    opt = getattr(lr_scheduler, 'optimizer', None)
    # mmengine schedulers may hold an OptimWrapper; both expose param_groups.
    return opt


@SPARSE_SCHEDULERS.register_module()
class BaseScheduler:
    """Attach fake-sparse nodes and refresh masks with the mask generator.

    With ``STRMaskGenerator`` + ``STRFakeSparse`` this is STR training (the
    thresholds are learned; the generator only mirrors the implicit mask).

    Args:
        mask_generator: A mask generator instance (default: the scheduler's
            ``default_mask_generator``).
        fake_sparse: ``(class, kwargs)`` of the fake-sparse module.
        leaf_module: Modules the tracer must not enter (classes, class names
            or qualified names); their layers stay dense.
        **kwargs: Scheduler keyword arguments, checked against ``ARGS``.
    """

    ARGS: dict[str, Arg] = {
        **LAYER_SELECTION_ARGS,
        'default_input_shape': Arg((list, tuple, type(None)), None, check_shape,
                                   'input shape for MAC statistics'),
    }
    default_mask_generator = 'NormalMaskGenerator'
    default_fake_sparse = 'FakeSparse'
    #: fake-sparse class names this scheduler works with (None: any).
    allowed_fake_sparse: tuple[str, ...] | None = None

    def __init__(self, mask_generator=None,
                 fake_sparse: tuple[type, dict] | None = None,
                 leaf_module: Sequence[Any] = (), **kwargs):
        owner = type(self).__name__
        self.cfg = validate_kwargs(kwargs, self.ARGS, 'scheduler.kwargs', owner)
        if mask_generator is None:
            mask_generator = MASK_GENERATORS.get(self.default_mask_generator)()
        self.mask_generator = mask_generator
        if fake_sparse is None:
            fake_sparse = (FAKE_SPARSES.get(self.default_fake_sparse), {})
        self.fake_sparse_cls, self.fake_sparse_kwargs = fake_sparse
        self._check_drivable(type(mask_generator), 'mask_generator.type')
        self._check_drivable(self.fake_sparse_cls, 'fake_sparse.type')
        if (self.allowed_fake_sparse is not None and
                self.fake_sparse_cls.__name__ not in self.allowed_fake_sparse):
            raise SparsityConfigError(
                f'fake_sparse.type: {owner} needs one of '
                f'{self.allowed_fake_sparse}, got {self.fake_sparse_cls.__name__}')
        if isinstance(leaf_module, str):
            leaf_module = as_name_list(leaf_module)
        self.leaf_module = list(leaf_module or ())
        self.no_prune_keyword = as_name_list(self.cfg['no_prune_keyword'])
        self.no_prune_layer = set(as_name_list(self.cfg['no_prune_layer']))
        self.model: nn.Module | None = None
        self.layers: OrderedDict[str, nn.Module] = OrderedDict()
        self.skipped: dict[str, str] = {}
        self.cur_iter = 0
        self._lr_schedulers: list[Any] = []
        self._lr_snapshot: dict | None = None
        self._optimizer = None
        self._opt_hook = None
        self._drive_by_optimizer = False

    def _check_drivable(self, cls: type, where: str) -> None:
        """A component that only some schedulers can drive (its
        ``scheduler_types``, e.g. ProbMask's) is an error under others: it
        would train silently at 0 % sparsity."""
        needed = getattr(cls, 'scheduler_types', None)
        if not needed:
            return
        mine = {c.__name__ for c in type(self).__mro__}
        if not mine.intersection(needed):
            raise SparsityConfigError(
                f'{where}: {cls.__name__} needs scheduler.type '
                f'{" or ".join(needed)}; {type(self).__name__} cannot drive '
                'it (its masks would never be set and training would run '
                'at 0 % sparsity)')

    # --- preparation -----------------------------------------------------
    def layer_filter(self, name: str, module: nn.Module) -> str | None:
        """Reason to keep a discovered layer dense, or None to sparsify it."""
        if name in self.no_prune_layer:
            return 'no_prune_layer'
        for kw in self.no_prune_keyword:
            if kw in name:
                return f'no_prune_keyword {kw!r}'
        return None

    def prepare_sparse_model(self, model: nn.Module,
                             leaf_module: Sequence[Any] | None = None,
                             concrete_args: dict | None = None,
                             init_masks: bool = True,
                             example_inputs: Any = None) -> nn.Module:
        """Trace ``model`` and attach fake-sparse nodes to its layers.

        The model is modified in place (and returned): its parameters keep
        their identity, so an optimizer built before stays valid.

        Args:
            model: The float model (load pretrained weights before).
            leaf_module: Overrides the config's ``leaf_module``.
            concrete_args: For the tracer (mmengine models default to their
                ``mode='tensor'`` path).
            init_masks: Compute the first masks now (False when weights are
                loaded later, as the Runner does; :meth:`update` then does it).
            example_inputs: An input batch (tensor or tuple; default: zeros
                of the config's ``default_input_shape`` when set): lets the
                tracer follow Python branches on sizes that torch.fx cannot
                trace symbolically (window attention in timm ViTs).

        Returns:
            The same model, prepared.
        """
        if self.model is not None:
            raise RuntimeError('prepare_sparse_model was already called')
        if leaf_module is not None:
            self.leaf_module = list(leaf_module)
        if any(True for _ in iter_sparse_layers(model)):
            raise RuntimeError('model already carries fake-sparse nodes')
        if example_inputs is None and self.cfg.get('default_input_shape'):
            # only used when the symbolic trace fails, where sizes matter,
            # not values: zeros (a random input would draw from the global
            # RNG and change a seeded run)
            ref = next(model.parameters(), None)
            example_inputs = torch.zeros(
                *self.cfg['default_input_shape'],
                device=None if ref is None else ref.device)
        names = discover_layers(model, self.leaf_module, concrete_args,
                                example_inputs)
        self.concrete_args = concrete_args
        self.example_inputs = example_inputs
        for name in names:
            module = model.get_submodule(name)
            reason = self.layer_filter(name, module)
            if reason:
                self.skipped[name] = reason
                continue
            fs = self.fake_sparse_cls(dense_weight(module).detach(),
                                      **self.fake_sparse_kwargs)
            attach_fake_sparse(module, fs)
            self.layers[name] = module
        self.model = model
        if self.skipped:
            note(f'{type(self).__name__}: {len(self.skipped)} layer(s) kept '
                 'dense: ' + ', '.join(f'{n} ({r})'
                                       for n, r in self.skipped.items()))
        note(f'{type(self).__name__}: sparsifying {len(self.layers)} layer(s)')
        self.after_prepare()
        if init_masks:
            self.update(self.cur_iter)
        return model

    def after_prepare(self) -> None:
        """Subclass hook run once the layers are attached."""

    def extra_parameters(self) -> list[nn.Parameter]:
        """Parameters the fake-sparse nodes added (STR thresholds, ProbMask
        scores): an optimizer built before preparation must get them."""
        params = []
        for layer in self.layers.values():
            params.extend(layer.weight_fake_sparse.parameters())
        return params

    def extra_param_group(self) -> dict[str, Any]:
        """Optimizer settings for the group of :meth:`extra_parameters`
        that differ from the model's (group 0) ones; a trainer adding them
        to an optimizer applies these over group 0's."""
        return {}

    # --- per-iteration logic ---------------------------------------------
    def update(self, cur_iter: int, enter_stage: bool = True) -> None:
        """Bring masks / stage to iteration ``cur_iter`` (completed iters).

        Idempotent: calling it twice with the same value changes nothing.

        Args:
            cur_iter: Number of completed iterations.
            enter_stage: For staged schedulers, also enter a stage that
                starts at ``cur_iter`` (the Runner hook defers this to the
                next iteration, so an evaluation at a stage end sees the
                finished stage).
        """
        self.cur_iter = int(cur_iter)

    def before_iter(self, cur_iter: int) -> None:
        """Called by the hook before each training iteration."""

    def step(self) -> None:
        """One iteration completed (standalone driving)."""
        self.update(self.cur_iter + 1)

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Refresh masks that depend on the weights (e.g. STR's)."""
        for layer in self.layers.values():
            self.mask_generator.update(layer)

    # --- standalone driving ----------------------------------------------
    def set_lr_scheduler(self, lr_scheduler, drive: bool = True) -> None:
        """Register the LR scheduler(s) to restart and, with ``drive``,
        count iterations on their ``step()``.

        Call it right after building the scheduler (its current state is
        the one restored at every restart).

        Args:
            lr_scheduler: A torch / mmengine scheduler or a list / dict of
                them.
            drive: Patch ``step()`` so each call is one sparse iteration
                (only the first scheduler of a list is patched).
        """
        scheds = _iter_schedulers(lr_scheduler)
        self._lr_schedulers = scheds
        self._lr_snapshot = self._snapshot_lr()
        if drive and scheds:
            self._patch_lr_step(scheds[0])
        self._drive_by_optimizer = False

    def init_optimizer(self, optimizer, drive: bool = True) -> None:
        """Run :meth:`after_optimizer_step` after every ``optimizer.step()``.

        Args:
            optimizer: A torch optimizer (or an object with ``.optimizer``).
            drive: Also count iterations on ``optimizer.step()`` when no LR
                scheduler drives them.
        """
        opt = getattr(optimizer, 'optimizer', optimizer)
        self._optimizer = opt
        if self._opt_hook is not None:
            self._opt_hook.remove()

        def _post_step(_opt, _args, _kwargs):
            self.after_optimizer_step()
            if self._drive_by_optimizer:
                self.step()

        self._opt_hook = opt.register_step_post_hook(_post_step)
        self._drive_by_optimizer = drive and not self._lr_schedulers

    def _patch_lr_step(self, sched) -> None:
        base = type(sched)
        if getattr(base, '_sparse_scheduler_patch', False):
            base = base.__mro__[1]
        owner = self

        def step(this, *args, **kwargs):
            out = base.step(this, *args, **kwargs)
            owner.step()
            return out

        # A class swap (not an instance attribute) keeps the patch out of
        # the scheduler's __dict__ and therefore out of its state_dict.
        sched.__class__ = type(base.__name__, (base,), {
            'step': step, '_sparse_scheduler_patch': True,
            '__module__': base.__module__})

    def _snapshot_lr(self) -> dict:
        groups = []
        for sched in self._lr_schedulers:
            opt = _optimizer_of(sched)
            if opt is not None:
                groups.append([{k: copy.deepcopy(v) for k, v in g.items()
                                if k != 'params'} for g in opt.param_groups])
            else:
                groups.append(None)
        return {'schedulers': [copy.deepcopy(s.state_dict())
                               for s in self._lr_schedulers],
                'groups': groups}

    def restart_lr(self) -> None:
        """Put every registered LR scheduler (and its optimizer's group
        hyper-parameters) back to the state at registration."""
        if not self._lr_snapshot:
            return
        for sched, state, groups in zip(self._lr_schedulers,
                                        self._lr_snapshot['schedulers'],
                                        self._lr_snapshot['groups']):
            sched.load_state_dict(copy.deepcopy(state))
            opt = _optimizer_of(sched)
            if opt is None or groups is None:
                continue
            for g, saved in zip(opt.param_groups, groups):
                for k, v in saved.items():
                    g[k] = copy.deepcopy(v)

    # --- statistics ------------------------------------------------------
    @torch.no_grad()
    def layer_sparsity(self) -> 'OrderedDict[str, float]':
        """Fraction of zero effective weights per sparsified layer."""
        out = OrderedDict()
        for name, layer in self.layers.items():
            eff = layer.weight_fake_sparse.effective_mask(dense_weight(layer))
            out[name] = 1.0 - float(eff.float().mean())
        return out

    @torch.no_grad()
    def global_sparsity(self) -> float:
        """Zero fraction over all sparsified layers' weights."""
        zeros = total = 0
        for layer in self.layers.values():
            eff = layer.weight_fake_sparse.effective_mask(dense_weight(layer))
            zeros += int((~eff).sum())
            total += eff.numel()
        return zeros / max(total, 1)

    @torch.no_grad()
    def apply_masks_to_weights(self) -> None:
        """Write masked values into the dense weights (pruned ones become 0),
        so a stripped model or an exported state_dict is sparse too."""
        for layer in self.layers.values():
            fs = layer.weight_fake_sparse
            # Only plain masking: STR / ProbMask weights must stay dense.
            if type(fs).forward is FakeSparse.forward:
                dense_weight(layer).mul_(fs.mask)

    def model_complexity(self, input_shape: Sequence[int] | None = None):
        """Per-layer dense MACs (the project's FLOPs counter) or None."""
        shape = input_shape or self.cfg.get('default_input_shape')
        if shape is None or self.model is None:
            return None
        from mmrazor_ext.estimators import get_model_complexity
        leaves, _ = resolve_leaf_modules(self.model, self.leaf_module)
        param = next(self.model.parameters())
        # MACs depend on shapes only; zeros draw nothing from the global RNG
        x = torch.zeros(*shape, device=param.device, dtype=param.dtype)
        return get_model_complexity(self.model, x, per_layer=True,
                                    leaf_modules=leaves + layer_leaves(self.model))

    # --- checkpointing ---------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain-python scheduler state (masks live in the model)."""
        return {'cur_iter': int(self.cur_iter)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cur_iter = int(state.get('cur_iter', 0))

    def save_checkpoint(self, path: str, **extra) -> str:
        """``torch.save`` the prepared model's state_dict plus metadata
        (atomically: a killed run never leaves a half-written file)."""
        os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
        ckpt = {'state_dict': self.model.state_dict(),
                'sparse_scheduler': self.state_dict(),
                'global_sparsity': self.global_sparsity()}
        ckpt.update(extra)
        return atomic_torch_save(path, ckpt)

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(layers={len(self.layers)}, '
                f'cur_iter={self.cur_iter})')

