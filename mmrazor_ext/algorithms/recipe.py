"""A compression recipe: several compressions, in order, in one training run.

``model = dict(type='CompressionRecipe', architecture=..., stages=[...])``
with ``train_cfg = dict(type='RecipeLoop')``
(:class:`~mmrazor_ext.engine.loops.RecipeLoop`) runs each stage as a phase
of one ``tools/train.py`` run, each with its own ``epochs`` of training:

* **pruning** ``dict(type='OneShotPruning' | 'LayerFusion', epochs=1,
  ...)``: the algorithm's own keys (``metric``, ``target``, ``pruner``,
  ``channel_pruning``, ``merging``, ``reconstruct``,
  ``bn_recalib_batches`` ...). The stage prunes (masked mode), fine-tunes,
  and at its end the model is physically exported: the next stage gets the
  smaller network and the loop rebuilds the optimizer for its parameters.
* **sparsity** ``dict(sparsity=dict(scheduler=...), epochs=2,
  misfit='error')``: the MSBench / Knight dict of ``sparsity=``
  (:func:`~mmrazor_ext.sparsity.build_sparse_scheduler`), applied to the
  *exported* network's layers; ``total_iters=None`` is the stage's
  iterations. At its end the masks are baked into the weights.
* **deploy** ``dict(type='Deploy', fuse_bn=True, onnx=True,
  check_onnx=True, rtol=1e-4)``: the last stage; BN folding that keeps the
  zero patterns, pattern checks and an ONNX file checked with onnxruntime
  (:func:`mmrazor_ext.algorithms.recipe_deploy.deploy_model`).

**Misfits.** A layer the sparsity stage would sparsify in the unpruned
network but not in the network the earlier stages left (e.g. 2:4 needs
``in % 16 == 0``) is a :class:`RecipeMisfitError` naming the layer, unless
the stage says ``misfit='skip'``; every layer kept dense is listed with its
reason in the report row. A pruning stage before an Ampere 2:4 stage gets
``pruner=dict(divisor=16)`` unless it sets a divisor itself, so its widths
fit.

**Resume.** The stage index, the structure of every finished pruning stage,
the active stage's masks / subnet and the sparse scheduler state are in the
checkpoint (``_extra_state``); :meth:`CompressionRecipe.load_recipe_state`
rebuilds the pruned network from them before the weights load, so
``--resume`` continues inside any stage with the same structure and masks.

**Report.** One row per stage (and one for the input model) from
:func:`~mmrazor_ext.algorithms.recipe_report` helpers, written to
``recipe_report.json`` with a table and a PNG chart.
"""
from __future__ import annotations

import copy
import inspect
import os.path as osp
from collections.abc import Iterable

import torch
from mmengine.logging import print_log
from torch import nn

from mmrazor_ext.estimators import get_model_complexity
from mmrazor_ext.pruners.pruned_model import apply_pruned_structure
from mmrazor_ext.registry import MODELS
from mmrazor_ext.sparsity import build_sparse_scheduler
from mmrazor_ext.sparsity.config import SparsityConfigError
from mmrazor_ext.sparsity.sparse_modules import dense_weight, strip_fake_sparse
from mmrazor_ext.utils.evaluation import evaluate_top1, recalibrate_bn
from mmrazor_ext.utils.io import atomic_torch_save

from .base import ArchitectureAlgorithm

__all__ = ['CompressionRecipe', 'RecipeConfigError', 'RecipeMisfitError',
           'check_stages', 'load_recipe_model']

#: stage types that prune (their algorithm class in the MODELS registry)
PRUNING_TYPES = ('OneShotPruning', 'LayerFusion')
#: keys of a sparsity / deploy stage (besides ``epochs`` and ``name``)
SPARSITY_KEYS = ('sparsity', 'misfit')
DEPLOY_KEYS = ('type', 'fuse_bn', 'onnx', 'check_onnx', 'rtol')
#: algorithm arguments the recipe sets itself (or that do not apply here)
_RECIPE_OWNED = ('architecture', 'input_shape', 'init_checkpoint',
                 'data_preprocessor', 'init_cfg', 'distill', 'fuse_bn')
RECIPE_STATE_VERSION = 1


class RecipeConfigError(ValueError):
    """A recipe stage is malformed; the message names the field."""


class RecipeMisfitError(ValueError):
    """A stage does not fit the network the earlier stages left; the
    message names the layer."""


def _epochs(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RecipeConfigError(f'{where}.epochs must be an int >= 0, got '
                                f'{value!r}')
    return value


def _check_pruning(i: int, stage: dict) -> dict:
    where = f'stages[{i}]'
    cls = MODELS.get(stage['type'])
    params = set(inspect.signature(cls.__init__).parameters) - {'self'}
    kwargs = {k: v for k, v in stage.items()
              if k not in ('type', 'epochs', 'name')}
    for key in kwargs:
        if key in _RECIPE_OWNED:
            why = ('BN is folded by the Deploy stage' if key == 'fuse_bn'
                   else 'set once for the whole recipe')
            raise RecipeConfigError(f'{where}.{key}: not a stage key in a '
                                    f'recipe ({why})')
        if key not in params:
            raise RecipeConfigError(
                f'{where}.{key}: unknown key for {stage["type"]} (known: '
                f'{sorted(params - set(_RECIPE_OWNED))})')
    return dict(kind='prune', type=stage['type'], kwargs=kwargs,
                epochs=_epochs(stage.get('epochs', 1), where),
                name=stage.get('name', stage['type']))


def _check_sparsity(i: int, stage: dict) -> dict:
    where = f'stages[{i}]'
    unknown = set(stage) - set(SPARSITY_KEYS) - {'epochs', 'name'}
    if unknown:
        raise RecipeConfigError(
            f'{where}.{sorted(unknown)[0]}: unknown key of a sparsity stage '
            f'(known: {list(SPARSITY_KEYS) + ["epochs", "name"]})')
    misfit = stage.get('misfit', 'error')
    if misfit not in ('error', 'skip'):
        raise RecipeConfigError(f"{where}.misfit must be 'error' or 'skip', "
                                f'got {misfit!r}')
    spec = copy.deepcopy(stage['sparsity'])
    try:
        sched = build_sparse_scheduler(spec)
    except SparsityConfigError as err:
        raise SparsityConfigError(f'{where}.sparsity.{err}') from err
    return dict(kind='sparsity', sparsity=spec, misfit=misfit,
                epochs=_epochs(stage.get('epochs', 1), where),
                name=stage.get('name', type(sched).__name__))


def _check_deploy(i: int, stage: dict) -> dict:
    where = f'stages[{i}]'
    unknown = set(stage) - set(DEPLOY_KEYS) - {'name', 'epochs'}
    if unknown:
        raise RecipeConfigError(f'{where}.{sorted(unknown)[0]}: unknown key '
                                f'of a Deploy stage (known: {DEPLOY_KEYS})')
    if stage.get('epochs', 0) != 0:
        raise RecipeConfigError(f'{where}.epochs: a Deploy stage does not '
                                f'train, got {stage["epochs"]!r}')
    for key in ('fuse_bn', 'onnx', 'check_onnx'):
        if not isinstance(stage.get(key, True), bool):
            raise RecipeConfigError(f'{where}.{key} must be a bool, got '
                                    f'{stage[key]!r}')
    rtol = stage.get('rtol', 1e-4)
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or \
            rtol <= 0:
        raise RecipeConfigError(f'{where}.rtol must be > 0, got {rtol!r}')
    return dict(kind='deploy', epochs=0, name=stage.get('name', 'Deploy'),
                fuse_bn=stage.get('fuse_bn', True),
                onnx=stage.get('onnx', True),
                check_onnx=stage.get('check_onnx', True), rtol=float(rtol))


def check_stages(stages) -> list[dict]:
    """Validated stages (``kind``: ``'prune'``, ``'sparsity'``,
    ``'deploy'``), with a divisor of 16 given to pruning stages that come
    before an Ampere 2:4 stage and set none.

    Raises:
        RecipeConfigError: Naming the field (``stages[2].type`` ...).
    """
    if not isinstance(stages, (list, tuple)) or not stages:
        raise RecipeConfigError('stages: must be a non-empty list of stage '
                                f'dicts, got {stages!r}')
    out = []
    for i, stage in enumerate(stages):
        if not isinstance(stage, dict):
            raise RecipeConfigError(f'stages[{i}]: must be a dict, got '
                                    f'{stage!r}')
        kind = stage.get('type')
        if 'sparsity' in stage:
            if kind not in (None, 'Sparsity'):
                raise RecipeConfigError(
                    f'stages[{i}].type: a stage with sparsity= is a sparsity '
                    f"stage (type 'Sparsity' or none), got {kind!r}")
            out.append(_check_sparsity(
                i, {k: v for k, v in stage.items() if k != 'type'}))
        elif kind in PRUNING_TYPES:
            out.append(_check_pruning(i, stage))
        elif kind == 'Deploy':
            out.append(_check_deploy(i, stage))
        else:
            raise RecipeConfigError(
                f'stages[{i}].type: unknown stage type {kind!r} (known: '
                f"{list(PRUNING_TYPES) + ['Deploy']}, or a stage with "
                'sparsity=dict(...))')
    for i, st in enumerate(out):
        if st['kind'] == 'deploy' and i != len(out) - 1:
            raise RecipeConfigError(f'stages[{i}].type: Deploy must be the '
                                    'last stage')
        if st['kind'] == 'prune' and any(s['kind'] == 'sparsity'
                                         for s in out[:i]):
            raise RecipeConfigError(
                f'stages[{i}].type: {st["type"]} after a sparsity stage '
                '(slicing channels would discard its masks); prune first')
    ampere = any(s['kind'] == 'sparsity' and _is_2of4(s['sparsity'])
                 for s in out)
    for i, st in enumerate(out):
        if ampere and st['kind'] == 'prune':
            _default_divisor(i, st)
    return out


def _is_2of4(spec) -> bool:
    """Whether a sparsity config makes 2:4 patterns."""
    sched = spec.get('scheduler', {}) if isinstance(spec, dict) else {}
    kwargs = sched.get('kwargs') or {}
    return sched.get('type') == 'AmpereScheduler' or (
        sched.get('type') == 'BlockSparseScheduler'
        and kwargs.get('sparsity_method') == 'Pruner2to4')


def _default_divisor(i: int, stage: dict) -> None:
    """Pruned widths of multiples of 16 keep layers 2:4 eligible
    (``in % 16``, ``out % 8``) for a later Ampere stage."""
    kw = stage['kwargs']
    target = kw
    if stage['type'] == 'LayerFusion':
        if not kw.get('channel_pruning'):
            return
        target = kw['channel_pruning'] = dict(kw['channel_pruning'])
    pruner = dict(target.get('pruner') or {})
    if 'divisor' not in pruner and 'round_to' not in pruner:
        pruner['divisor'] = 16
        print_log(f'recipe stages[{i}]: pruner.divisor=16 so that the pruned '
                  'widths stay 2:4 eligible', logger='current')
    target['pruner'] = pruner


@MODELS.register_module()
class CompressionRecipe(ArchitectureAlgorithm):
    """Run compression stages in order on one network (see the module doc).

    Args:
        architecture: Model config (or module), e.g. an mmpretrain
            ``ImageClassifier``.
        stages: The stage dicts (:func:`check_stages`).
        input_shape: Example input shape (tracing, MACs, latency, ONNX).
        init_checkpoint: Trained weights of ``architecture``.
        eval_batches: Validation batches for each stage's top-1 (None: all).
        latency_batch: Batch size of the CPU latency in the report.
        data_preprocessor: See :class:`ArchitectureAlgorithm`.
        init_cfg: mmengine init config.

    Attributes:
        stage_index (int): The stage entered last (-1: none yet).
        structures (list[dict]): Saved structures of finished pruning stages.
        rows (list[dict]): Report rows so far.
    """

    def __init__(self, architecture: dict | nn.Module, stages: list,
                 input_shape: Iterable[int] = (1, 3, 32, 32),
                 init_checkpoint: str | None = None,
                 eval_batches: int | None = None, latency_batch: int = 64,
                 data_preprocessor: dict | None = None,
                 init_cfg: dict | None = None):
        self_stages = check_stages(stages)
        super().__init__(architecture, init_checkpoint, data_preprocessor,
                         init_cfg)
        self.stages = self_stages
        self.input_shape = tuple(input_shape)
        gen = torch.Generator().manual_seed(0)
        self.example_inputs = torch.randn(*self.input_shape, generator=gen)
        self.eval_batches = eval_batches
        self.latency_batch = int(latency_batch)
        self.stage_index = -1
        self.stage_finished = False
        self.structures: list[dict] = []
        self.rows: list[dict] = []
        self.deploy_checks: dict | None = None
        # Outside the module tree (not in state_dict / the optimizer): the
        # unpruned network the structures are re-applied to on resume, the
        # active pruning algorithm and sparse scheduler.
        self.__dict__['_pristine'] = copy.deepcopy(self.architecture)
        self.__dict__['_stage_algo'] = None
        self.__dict__['_scheduler'] = None

    # -- what the loop reads ------------------------------------------------------
    @property
    def stage_epochs(self) -> list[int]:
        """Training epochs of each stage."""
        return [s['epochs'] for s in self.stages]

    @property
    def sparse_scheduler(self):
        """The active sparsity stage's scheduler (None otherwise)."""
        return self._scheduler

    # -- checkpoint state ----------------------------------------------------------
    def recipe_state(self) -> dict:
        """Plain containers / tensors: loads with ``weights_only=True``."""
        algo, sched = self._stage_algo, self._scheduler
        return {'version': RECIPE_STATE_VERSION,
                'stage_index': self.stage_index,
                'stage_finished': self.stage_finished,
                'structures': copy.deepcopy(self.structures),
                'stage_state': algo.structure_state() if algo else None,
                'sparse': sched.state_dict() if sched else None,
                'rows': copy.deepcopy(self.rows)}

    def get_extra_state(self) -> dict:
        return self.recipe_state()

    def set_extra_state(self, state: dict) -> None:
        # PyTorch calls this before loading the children: the network is
        # rebuilt to the checkpoint's shape first.
        self.load_recipe_state(state)

    def load_recipe_state(self, state: dict) -> None:
        """Rebuild the network of ``state`` (the structures of the finished
        pruning stages, the active stage's subnet or fake-sparse nodes) and
        restore the stage; a no-op when this model is already there."""
        if self._matches(state):
            return
        device = next(self.architecture.parameters()).device
        with torch.random.fork_rng(devices=[]):
            arch = copy.deepcopy(self._pristine).to(device)
            for structure in state['structures']:
                arch = apply_pruned_structure(
                    arch, structure, (self.example_inputs,),
                    where='recipe checkpoint')
            self.architecture = arch
            self.__dict__['_stage_algo'] = None
            self.__dict__['_scheduler'] = None
            self.structures = copy.deepcopy(state['structures'])
            self.rows = list(state.get('rows') or [])
            self.stage_index = int(state['stage_index'])
            self.stage_finished = bool(state['stage_finished'])
            if self.stage_index >= 0 and not self.stage_finished:
                spec = self.stages[self.stage_index]
                if spec['kind'] == 'prune':
                    self._build_stage_algo(spec).load_structure_state(
                        state['stage_state'] or {})
                elif spec['kind'] == 'sparsity':
                    self._prepare_sparsity(self.stage_index, spec,
                                           total_iters=None)
                    self._scheduler.load_state_dict(state['sparse'])
        print_log(f'recipe: resumed in stage {self.stage_index} '
                  f'({len(self.structures)} pruning stage(s) re-applied)',
                  logger='current')

    def _matches(self, state: dict) -> bool:
        return (state.get('stage_index') == self.stage_index
                and state.get('stage_finished') == self.stage_finished
                and state.get('structures') == self.structures)

    # -- stages ----------------------------------------------------------------------
    def _build_stage_algo(self, spec: dict):
        cfg = dict(type=spec['type'], architecture=self.architecture,
                   input_shape=self.input_shape, **copy.deepcopy(spec['kwargs']))
        algo = MODELS.build(cfg)
        self.__dict__['_stage_algo'] = algo
        return algo

    def _prepare_sparsity(self, index: int, spec: dict,
                          total_iters: int | None, work_dir: str = '.'):
        cfg = copy.deepcopy(spec['sparsity'])
        sched = build_sparse_scheduler(cfg)
        if getattr(sched, 'total_iters', 0) is None:
            sched.total_iters = total_iters or 1
        for key, sub in (('save_dir', 'sparse_ckpts'),
                         ('output_dir', 'sparse_analysis')):
            if hasattr(sched, key) and getattr(sched, key) is None:
                setattr(sched, key, osp.join(work_dir, f'stage{index}_{sub}'))
        sched.prepare_sparse_model(self.architecture, init_masks=False)
        self.__dict__['_scheduler'] = sched
        misfits = self._misfits(sched)
        if misfits and spec['misfit'] == 'error':
            name, reason, shape = misfits[0]
            raise RecipeMisfitError(
                f'recipe stage {index} ({type(sched).__name__}): layer '
                f'{name!r} does not fit the network the earlier stages left: '
                f'{reason} (its unpruned shape {shape} fits); prune with '
                "pruner=dict(divisor=16) or give this stage misfit='skip'"
                + (f' ({len(misfits)} misfit layers in all: '
                   f'{[m[0] for m in misfits]})' if len(misfits) > 1 else ''))
        return sched

    def _misfits(self, sched) -> list[tuple[str, str, tuple]]:
        """Layers kept dense now that the scheduler would sparsify in the
        unpruned network."""
        out = []
        pristine = dict(self._pristine.named_modules())
        for name, reason in sched.skipped.items():
            orig = pristine.get(name)
            if orig is None or not hasattr(orig, 'weight'):
                continue
            if sched.layer_filter(name, orig) is None:
                out.append((name, reason, tuple(dense_weight(orig).shape)))
        return out

    def enter_stage(self, index: int, batches, val_batches=None,
                    work_dir: str = '.', total_iters: int | None = None
                    ) -> None:
        """Finish the current stage and start stage ``index``.

        Args:
            index: The stage to start.
            batches: Training batches (pruning metrics, BN recalibration).
            val_batches: Validation batches for the report's top-1.
            work_dir: Where files go.
            total_iters: Training iterations of the stage.
        """
        if not self.rows:
            self._add_row(-1, 'input', val_batches)
        self.finish_stage(val_batches, work_dir)
        spec = self.stages[index]
        self.stage_index, self.stage_finished = index, False
        print_log(f'recipe: stage {index} ({spec["name"]}) starts, '
                  f'{spec["epochs"]} epoch(s)', logger='current')
        with torch.random.fork_rng(devices=[]):
            if spec['kind'] == 'prune':
                algo = self._build_stage_algo(spec)
                algo.step = 0
                reference = algo.reconstruction_reference()
                algo.prune(batches, 1)
                if algo.reconstruct_cfg is not None:
                    algo.reconstruct_pruned(batches, reference)
                if algo.bn_recalib_batches:
                    recalibrate_bn(algo.architecture, batches,
                                   algo.bn_recalib_batches)
                # LayerFusion removes blocks in place; keep its network
                self.architecture = algo.architecture
            elif spec['kind'] == 'sparsity':
                sched = self._prepare_sparsity(index, spec, total_iters,
                                               work_dir)
                sched.update(0)
            else:
                self._deploy(index, spec, val_batches, work_dir)

    def finish_stage(self, val_batches=None, work_dir: str = '.') -> None:
        """End the active stage: export a pruning stage's network, bake a
        sparsity stage's masks into the weights, add its report row."""
        if self.stage_index < 0 or self.stage_finished:
            return
        spec = self.stages[self.stage_index]
        extra = {}
        if spec['kind'] == 'prune':
            algo = self._stage_algo
            small = algo.export_model()
            extra['export_check'] = {k: v for k, v in (
                algo.export_check(small) or {}).items()
                if isinstance(v, (int, float, bool, str))}
            self.structures.append(algo.pruned_structure())
            self.architecture = small
            self.__dict__['_stage_algo'] = None
        elif spec['kind'] == 'sparsity':
            sched = self._scheduler
            sched.apply_masks_to_weights()
            extra.update(
                global_sparsity=sched.global_sparsity(),
                sparsified_layers=list(sched.layers),
                skipped_layers=dict(sched.skipped),
                # kept dense only because earlier stages narrowed them
                misfit_layers=[m[0] for m in self._misfits(sched)])
            strip_fake_sparse(self.architecture, bake=True)
            self.__dict__['_scheduler'] = None
        self.stage_finished = True
        if spec['kind'] != 'deploy':
            self._add_row(self.stage_index, spec['name'], val_batches, extra)

    def _deploy(self, index, spec, val_batches, work_dir) -> None:
        from .recipe_deploy import deploy_model
        onnx_path = osp.join(work_dir, 'recipe_model.onnx') \
            if spec['onnx'] else None
        model, checks = deploy_model(
            self.architecture.eval(), self.example_inputs,
            fuse_bn=spec['fuse_bn'], onnx_path=onnx_path,
            check_onnx=spec['check_onnx'], rtol=spec['rtol'])
        self.architecture = model
        self.deploy_checks = checks
        self.stage_finished = True
        self._add_row(index, spec['name'], val_batches,
                      {'deploy': _plain(checks)})

    # -- training-iteration hooks (called by the loop) ----------------------------
    def before_train_iter(self, stage_iter: int) -> None:
        if self._scheduler is not None:
            self._scheduler.before_iter(stage_iter)

    def after_train_iter(self, stage_iter: int) -> None:
        if self._scheduler is not None:
            self._scheduler.after_optimizer_step()
            self._scheduler.update(stage_iter + 1, enter_stage=False)

    # -- report ----------------------------------------------------------------------
    def _add_row(self, index: int, name: str, val_batches, extra=None):
        model = self.architecture
        try:
            from .recipe_deploy import measure_stage
        except ImportError:  # the deploy module is optional for training
            measure_stage = None
        if measure_stage is not None:
            row = measure_stage(model, self.example_inputs,
                                latency_batch=self.latency_batch)
        else:
            cx = get_model_complexity(model, (self.example_inputs,))
            row = {'macs': cx['flops'], 'params': cx['params'],
                   'nonzero_params': sum(int((p != 0).sum())
                                         for p in model.parameters())}
        if val_batches is not None:
            row['top1'] = evaluate_top1(model, val_batches, self.eval_batches)
        # ``stage`` is the label the report shows (a name, as
        # recipe_report wants); ``index`` the stage number (-1: input).
        label = name if index < 0 else f'{index} {name}'
        row = {'stage': label, 'index': index, 'name': name, **_plain(row),
               **_plain(extra or {})}
        self.rows.append(row)
        print_log(f'recipe: stage {index} ({name}): ' + ', '.join(
            f'{k}={v}' for k, v in row.items()
            if isinstance(v, (int, float, str))), logger='current')
        return row

    def write_results(self, work_dir: str) -> dict:
        """``recipe_report.json`` (+ table, PNG) and ``recipe_model.pth``
        (structures + weights, :func:`load_recipe_model`)."""
        from .recipe_report import write_recipe_report
        path = osp.join(work_dir, 'recipe_model.pth')
        atomic_torch_save(path, {
            'state_dict': {k: v.detach().cpu() for k, v in
                           self.architecture.state_dict().items()},
            'recipe': {'structures': copy.deepcopy(self.structures),
                       'bn_folded': bool(self.deploy_checks and any(
                           s['kind'] == 'deploy' and s['fuse_bn']
                           for s in self.stages)),
                       'input_shape': list(self.input_shape)}})
        return write_recipe_report(work_dir, self.rows)


def _plain(value):
    """JSON-able copy (tensors to lists / numbers)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return str(value)


def load_recipe_model(model: nn.Module, path: str) -> nn.Module:
    """Rebuild the final network of a recipe from ``recipe_model.pth``.

    Args:
        model: A freshly built model of the original definition (not
            changed).
        path: The file :meth:`CompressionRecipe.write_results` wrote.
    """
    from mmrazor_ext.engine.checkpoint import safe_load
    from mmrazor_ext.graph import fold_bn
    ckpt = safe_load(path)
    info = ckpt['recipe']
    x = (torch.zeros(*info['input_shape']),)
    small = copy.deepcopy(model)
    for structure in info['structures']:
        small = apply_pruned_structure(small, structure, x, where=path)
    if info['bn_folded']:
        small = fold_bn(small.eval(), x, (), inplace=True)
    small.load_state_dict(ckpt['state_dict'])
    return small
