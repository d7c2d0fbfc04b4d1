"""Amba level pruning: a staircase of global sparsities (MSBench's default).

``total_iters`` is split into one equal stage per ``sparsity_table`` entry
(the last stage also takes the remainder). At the start of stage ``k`` the
masks are recomputed from the current (masked) weights for the global
sparsity ``sparsity_table[k]`` and the LR schedule restarts; at its end the
model is saved to ``save_dir/global_sparse_rate_{s}.pth.tar``.

Per-layer sparsities (``prun_algo``):

* ``0`` - uniform: every layer gets the same fraction, bisected so the
  global sparsity matches after rounding.
* ``1`` - energy allocation: each layer keeps the fewest weights holding a
  fraction ``E_l = E ** alpha_l`` of its squared-magnitude energy, with one
  global ``E`` bisected until the global sparsity is within 1.5 % of the
  entry. ``alpha_l = 1 / (1 + prun_algo_tuning * g_l)`` where ``g_l`` is the
  layer's stride group (0 at full resolution, +1 at each downsampling,
  linear layers last), so deeper, lower-resolution layers keep more energy;
  depthwise layers get ``alpha_l / 2`` (pruned less) or, with
  ``dw_no_prune``, stay dense. Because already-zero weights carry no energy,
  sparsity only grows from stage to stage.
"""
import os.path as osp
from collections import OrderedDict

import torch
from mmengine.dist import is_main_process
from torch import nn

from mmrazor_ext.registry import SPARSE_SCHEDULERS

from .base_scheduler import BaseScheduler, note
from .config import (
    Arg,
    SparsityConfigError,
    check_non_negative,
    check_positive,
    check_sparsity_table,
    one_of,
)
from .sparse_modules import dense_weight

TOLERANCE = 0.015  # |achieved - target| global sparsity, as a fraction


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 and \
        m.groups == m.in_channels


def _fmt_rate(s) -> str:
    return f'{s:g}'


def table_in_percent(table, unit: str = 'percent') -> list[float]:
    """Validate a sparsity table and return it in percent.

    Args:
        table: Increasing sparsities: percents in [0, 100), at least one
            >= 1, or fractions in [0, 1) with ``unit='fraction'``.
        unit: ``'percent'`` or ``'fraction'``.

    Raises:
        SparsityConfigError: naming ``scheduler.kwargs.sparsity_table``.
    """
    where = 'scheduler.kwargs.sparsity_table'
    values = list(table)
    if unit == 'fraction':
        bad = [v for v in values if isinstance(v, bool)
               or not isinstance(v, (int, float)) or not 0 <= v < 1]
        if bad:
            raise SparsityConfigError(
                f"{where}: with sparsity_unit='fraction' entries must lie "
                f'within [0, 1), got {bad[0]!r}')
        values = [round(100.0 * v, 6) for v in values]
    msg = check_sparsity_table(values)
    if msg:
        raise SparsityConfigError(f'{where}: {msg}')
    if unit == 'percent' and all(v < 1 for v in values):
        raise SparsityConfigError(
            f'{where}: {values} looks like fractions, but the table is in '
            f'percent (0.7 means 0.7 %); write '
            f'{[round(100 * v, 4) for v in values]} or set '
            "sparsity_unit='fraction'")
    return values


def _check_total_iters(v) -> str | None:
    return None if v is None else check_positive(v)


@SPARSE_SCHEDULERS.register_module()
class AmbaLevelPruneScheduler(BaseScheduler):
    """Staircase level pruning with per-stage LR restarts (see module doc).

    Keyword Args:
        total_iters: Sparse-training iterations (None: the SparsityHook
            takes the Runner's ``max_iters``).
        sparsity_table: Increasing global sparsities in percent, [0, 100)
            (e.g. ``[30, 50, 70]``). A table whose entries are all below 1
            (``[0.3, 0.5, 0.7]``) looks like fractions and is an error
            unless ``sparsity_unit='fraction'`` says so.
        sparsity_unit: ``'percent'`` (default) or ``'fraction'`` (entries
            in [0, 1), converted to percent).
        no_prune_keyword / no_prune_layer: Layers kept dense.
        prun_algo: 1 energy allocation, 0 uniform.
        prun_algo_tuning: Strength of the stride-group bias (prun_algo 1).
        dw_no_prune: Keep depthwise convolutions dense.
        do_sparse_analysis: Write ``dict_prun_table.txt`` and
            ``desrie_prun_table.txt`` (with MAC totals) to ``output_dir``.
        default_input_shape: Input shape for MAC statistics.
        output_dir: Folder for the analysis files.
        save_dir: Folder for the per-stage checkpoints (None: not saved).
    """

    ARGS = {
        **BaseScheduler.ARGS,
        'total_iters': Arg((int, type(None)), None, _check_total_iters),
        'sparsity_table': Arg((list, tuple)),
        'sparsity_unit': Arg((str,), 'percent', one_of('percent', 'fraction')),
        'prun_algo': Arg((int,), 1, one_of(0, 1)),
        'prun_algo_tuning': Arg((float,), 0.5, check_non_negative),
        'dw_no_prune': Arg((bool,), False),
        'do_sparse_analysis': Arg((bool,), False),
        'default_input_shape': Arg((list, tuple, type(None)), [1, 3, 224, 224],
                                   BaseScheduler.ARGS['default_input_shape'].check),
        'output_dir': Arg((str, type(None)), None),
        'save_dir': Arg((str, type(None)), None),
    }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.table: list[float] = table_in_percent(
            self.cfg['sparsity_table'], self.cfg['sparsity_unit'])
        self.total_iters: int | None = self.cfg['total_iters']
        self.save_dir: str | None = self.cfg['save_dir']
        self.output_dir: str | None = self.cfg['output_dir']
        self.applied_stage = -1
        self.saved_stages: list[int] = []
        self.achieved: dict[int, float] = {}
        self.stage_layer_sparsity: dict[int, dict[str, float]] = {}
        self.layer_info: OrderedDict[str, dict] = OrderedDict()
        self.total_macs: int | None = None

    # --- preparation -----------------------------------------------------
    def layer_filter(self, name, module):
        reason = super().layer_filter(name, module)
        if reason is None and self.cfg['dw_no_prune'] and _is_depthwise(module):
            reason = 'dw_no_prune'
        return reason

    def after_prepare(self) -> None:
        comp = None
        try:
            comp = self.model_complexity()
        except Exception as e:  # analysis must never stop training
            note(f'AmbaLevelPruneScheduler: MAC statistics unavailable ({e}); '
                 'stride groups default to 0', 'WARNING')
        layers = (comp or {}).get('layers', {})
        self.total_macs = comp['flops'] if comp else None
        spatial = {}
        for name, layer in self.layers.items():
            w = dense_weight(layer)
            macs = layers.get(name, {}).get('flops', 0)
            # MACs / weight elements = output positions (1 for linear).
            sp = macs // max(w.numel(), 1) if macs else 0
            spatial[name] = sp if not isinstance(layer, nn.Linear) else 1
            self.layer_info[name] = {
                'type': type(layer).__mro__[1].__name__,
                'weight_shape': 'x'.join(str(d) for d in w.shape),
                'params': w.numel(), 'macs': int(macs),
                'out_positions': int(spatial[name]),
                'depthwise': _is_depthwise(layer)}
        # Stride group: rank of the output resolution, largest first.
        sizes = sorted({s for s in spatial.values() if s > 0}, reverse=True)
        for name, info in self.layer_info.items():
            sp = spatial[name]
            info['stride_group'] = sizes.index(sp) if sp in sizes else 0
        if self._analysis_on():
            self.write_dict_table()

    # --- allocation --------------------------------------------------------
    @torch.no_grad()
    def allocate(self, target: float):
        """Number of weights each layer keeps for global sparsity ``target``.

        Args:
            target: Global sparsity fraction in [0, 1).

        Returns:
            ``(keeps, orders)``: ``{layer: kept weights}`` and, per layer, the
            flat weight indices by decreasing effective magnitude (so the
            kept set is ``order[:keep]``).
        """
        names = list(self.layers)
        orders, cums = [], []
        for n in names:
            w = self.layers[n].weight.detach().flatten().float().abs()
            # One sort per layer serves both the allocation and the mask.
            order = torch.argsort(w, descending=True)
            orders.append(order)
            if self.cfg['prun_algo'] == 1:
                c = torch.cumsum(w[order].double() ** 2, 0)
                cums.append(c / c[-1] if c[-1] > 0 else torch.ones_like(c))
        sizes = torch.tensor([o.numel() for o in orders], dtype=torch.float64)
        total = float(sizes.sum())
        want_keep = (1.0 - target) * total
        if self.cfg['prun_algo'] == 0:
            def keeps_for(x):  # x: uniform layer sparsity; keep falls with x
                return torch.clamp(sizes - torch.round(x * sizes), min=1)
            rising = False
        else:
            tuning = self.cfg['prun_algo_tuning']
            alphas = []
            for n in names:
                info = self.layer_info.get(n, {})
                a = 1.0 / (1.0 + tuning * info.get('stride_group', 0))
                alphas.append(a * 0.5 if info.get('depthwise') else a)
            alphas_t = torch.tensor(alphas, dtype=torch.float64)

            def keeps_for(x):  # x: global kept-energy fraction E; keep rises
                el = torch.pow(torch.tensor(x, dtype=torch.float64), alphas_t)
                return torch.tensor(
                    [min(int(torch.searchsorted(c, el[i].item() * (1 - 1e-12))) + 1,
                         c.numel()) for i, c in enumerate(cums)],
                    dtype=torch.float64)
            rising = True

        lo, hi = 0.0, 1.0
        best = keeps_for(1.0 if rising else 0.0)
        for _ in range(60):
            mid = (lo + hi) / 2
            k = keeps_for(mid)
            kept = float(k.sum())
            if abs(kept - want_keep) < abs(float(best.sum()) - want_keep):
                best = k
            if (kept > want_keep) == rising:
                hi = mid
            else:
                lo = mid
            if abs(kept - want_keep) / total < 1e-4:
                break
        if target <= 0:  # a 0 entry keeps every non-zero weight exactly
            best = torch.tensor([float((self.layers[n].weight != 0).sum())
                                 for n in names], dtype=torch.float64)
        keeps = OrderedDict((n, int(v)) for n, v in zip(names, best.tolist()))
        return keeps, OrderedDict(zip(names, orders))

    @torch.no_grad()
    def apply_stage(self, stage: int) -> float:
        """Compute and install the masks of ``stage``; returns the achieved
        global sparsity."""
        target = self.table[stage] / 100.0
        # Ranked by the effective weight, so pruned weights stay pruned.
        keeps, orders = self.allocate(target)
        per_layer = {}
        for name, keep in keeps.items():
            layer = self.layers[name]
            w = dense_weight(layer)
            mask = torch.zeros(w.numel(), dtype=torch.bool, device=w.device)
            mask[orders[name][:keep]] = True
            layer.weight_fake_sparse.set_mask(mask.view_as(w))
            per_layer[name] = 1.0 - keep / w.numel()
        achieved = self.global_sparsity()
        self.applied_stage = stage
        self.achieved[stage] = achieved
        self.stage_layer_sparsity[stage] = per_layer
        ok = abs(achieved - target) <= TOLERANCE
        note(f'AmbaLevelPruneScheduler: stage {stage} (iter {self.cur_iter}) '
             f'target {self.table[stage]:g}% -> global sparsity '
             f'{100 * achieved:.2f}%' + ('' if ok else ' (outside 1.5 %!)'),
             'INFO' if ok else 'WARNING')
        if self._analysis_on():
            self.write_desire_table()
        return achieved

    # --- stages ------------------------------------------------------------
    def _require_total_iters(self) -> int:
        if self.total_iters is None:
            raise SparsityConfigError(
                'scheduler.kwargs.total_iters: needed to split the stages '
                '(None is only allowed with SparsityHook, which uses the '
                "Runner's max_iters)")
        if self.total_iters < len(self.table):
            raise SparsityConfigError(
                f'scheduler.kwargs.total_iters: {self.total_iters} is fewer '
                f'than the {len(self.table)} stages of sparsity_table')
        return self.total_iters

    @property
    def stage_len(self) -> int:
        return self._require_total_iters() // len(self.table)

    def stage_end(self, stage: int) -> int:
        """Iteration count at which ``stage`` ends."""
        if stage == len(self.table) - 1:
            return self._require_total_iters()
        return (stage + 1) * self.stage_len

    def stage_of(self, cur_iter: int) -> int:
        return min(cur_iter // self.stage_len, len(self.table) - 1)

    def update(self, cur_iter: int, enter_stage: bool = True) -> None:
        """Save finished stages, then enter the stage of ``cur_iter``."""
        super().update(cur_iter)
        for k in range(self.applied_stage + 1):
            if k not in self.saved_stages and cur_iter >= self.stage_end(k):
                self.save_stage(k)
        stage = self.stage_of(cur_iter)
        if stage > self.applied_stage and (enter_stage or self.applied_stage < 0):
            if self.applied_stage >= 0:
                self.restart_lr()
            self.apply_stage(stage)

    def before_iter(self, cur_iter: int) -> None:
        self.update(cur_iter)

    def save_stage(self, stage: int) -> str | None:
        self.saved_stages.append(stage)
        if self.save_dir is None:
            note(f'AmbaLevelPruneScheduler: stage {stage} finished '
                 f'(save_dir is None: no checkpoint)')
            return None
        path = osp.join(self.save_dir,
                        f'global_sparse_rate_{_fmt_rate(self.table[stage])}.pth.tar')
        if is_main_process():
            # Dense MACs let tools/analysis/sparsity_report.py show the
            # effective MACs without rebuilding the model.
            self.save_checkpoint(
                path, stage=stage, sparsity_table_entry=self.table[stage],
                iter=self.cur_iter, total_macs=self.total_macs,
                layer_macs={n: int(i['macs']) for n, i in self.layer_info.items()})
            note(f'AmbaLevelPruneScheduler: saved {path} (global sparsity '
                 f'{100 * self.global_sparsity():.2f}%)')
        return path

    # --- analysis files ------------------------------------------------------
    def _analysis_on(self) -> bool:
        if not self.cfg['do_sparse_analysis'] or not is_main_process():
            return False
        if (self.output_dir or self.save_dir) is None:
            if not getattr(self, '_warned_no_dir', False):
                note('AmbaLevelPruneScheduler: do_sparse_analysis needs '
                     'output_dir (or save_dir); analysis files not written',
                     'WARNING')
                self._warned_no_dir = True
            return False
        return True

    def _out(self, fname: str) -> str:
        import os
        out_dir = self.output_dir or self.save_dir
        os.makedirs(out_dir, exist_ok=True)
        return osp.join(out_dir, fname)

    DICT_COLUMNS = ('layer', 'type', 'weight_shape', 'params', 'macs',
                    'out_positions', 'stride_group', 'depthwise')

    def write_dict_table(self) -> str:
        """Per-layer dictionary: shape, params, dense MACs, stride group."""
        path = self._out('dict_prun_table.txt')
        lines = ['\t'.join(self.DICT_COLUMNS)]
        for name, info in self.layer_info.items():
            lines.append('\t'.join(str(info[c]) if c != 'layer' else name
                                   for c in self.DICT_COLUMNS))
        sparse_macs = sum(i['macs'] for i in self.layer_info.values())
        lines.append(f'# total_dense_macs\t{self.total_macs}')
        lines.append(f'# sparsifiable_layer_macs\t{sparse_macs}')
        lines.append(f'# skipped_layers\t{",".join(self.skipped) or "-"}')
        with open(path, 'w') as f:
            f.write('\n'.join(lines) + '\n')
        return path

    def write_desire_table(self) -> str:
        """Per-layer sparsity (%) of each stage applied so far, then the
        global sparsity and dense / sparse MAC totals per stage."""
        path = self._out('desrie_prun_table.txt')
        cols = [f'sparsity_{_fmt_rate(s)}' for s in self.table]
        lines = ['\t'.join(['layer'] + cols)]

        def cell(stage, value):
            return f'{value:.2f}' if stage in self.stage_layer_sparsity else '-'
        for name in self.layers:
            row = [name] + [cell(k, 100 * self.stage_layer_sparsity.get(k, {})
                                 .get(name, 0.0)) for k in range(len(self.table))]
            lines.append('\t'.join(row))
        glob = [cell(k, 100 * self.achieved.get(k, 0.0))
                for k in range(len(self.table))]
        lines.append('\t'.join(['global'] + glob))
        dense = self.total_macs
        lines.append('\t'.join(['dense_macs'] + [str(dense)] * len(self.table)))
        sparse = []
        for k in range(len(self.table)):
            if k not in self.stage_layer_sparsity or dense is None:
                sparse.append('-')
                continue
            removed = sum(info['macs'] * self.stage_layer_sparsity[k].get(n, 0.0)
                          for n, info in self.layer_info.items())
            sparse.append(str(int(round(dense - removed))))
        lines.append('\t'.join(['sparse_macs'] + sparse))
        with open(path, 'w') as f:
            f.write('\n'.join(lines) + '\n')
        return path

    # --- checkpointing -------------------------------------------------------
    def state_dict(self):
        state = super().state_dict()
        state.update(
            applied_stage=int(self.applied_stage),
            saved_stages=[int(s) for s in self.saved_stages],
            achieved={int(k): float(v) for k, v in self.achieved.items()},
            stage_layer_sparsity={
                int(k): {n: float(x) for n, x in v.items()}
                for k, v in self.stage_layer_sparsity.items()},
            total_iters=self.total_iters)
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.applied_stage = int(state.get('applied_stage', -1))
        self.saved_stages = list(state.get('saved_stages', []))
        self.achieved = dict(state.get('achieved', {}))
        self.stage_layer_sparsity = dict(state.get('stage_layer_sparsity', {}))
        if state.get('total_iters') is not None:
            self.total_iters = int(state['total_iters'])
