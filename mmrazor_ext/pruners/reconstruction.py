"""Reconstruction after pruning: refit the consumers of pruned channels.

After :meth:`ChannelPruner.set_subnet` every conv / linear layer that
*consumes* pruned channels sees zeros where the dense model had features.
:func:`reconstruct` refits those consumers on a few calibration batches so
that their outputs match the dense model's again, then re-estimates BN.

``least_squares`` (ThiNet; He et al. 2017; sequential as AMC's
fm-reconstruction): consumers are visited in forward order; for consumer
``k`` the inputs ``X`` (kept input channels as patches at sampled output
positions) come from the masked network whose consumers ``1 .. k-1`` are
already refitted, the target ``Y`` is the dense model's output of that layer
(minus its bias) at the same positions. Only ``X^T X`` (``C_in k^2`` squared
per group), ``X^T Y`` and sums are accumulated; a ridge problem with an
intercept is solved in float64 per conv group. The intercept goes into the
layer's bias, else the running mean of the BN right after it, else a new
bias. ``bias_compensation`` adds ``W[:, removed] . E[x_removed]`` (dense
network, calibration data) the same way: one dense pass, no solve.

Weights are written into the masked model (pruned rows / columns untouched:
masks hide them, export slices them away), so ``export()`` and
``state_dict()`` carry them. The target network is a dense copy of the
model (or ``reference``: e.g. the masked model before an iterative pruning
step). Execution follows ``pruner.graph.gm`` (the eval-mode tensor path)
node by node on the masked model and the target copy. A module called at
several places is re-solved at each call on all calls so far.

Memory: the calibration inputs (``num_batches`` batches, read once), one
extra copy of the model (the target), per consumer and conv group one
float64 Gram matrix ``X^T X`` of ``(C_in k^2 / groups)^2`` entries plus
``X^T Y`` (the points themselves are not kept), and the live activations
at the current point of the graph (the "frontier") of both networks. When
the frontier of all batches fits in ``max_cache_mb`` each node runs once
per batch (two forward passes in all); otherwise each consumer re-runs the
forward prefix batch by batch (the frontier of one batch, time quadratic in
the depth). Both give the same result.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from torch import fx, nn

from mmrazor_ext.graph import remove_masks
from mmrazor_ext.utils.evaluation import recalibrate_bn

from .refit import LeastSquaresStats, check_ridge

__all__ = ['reconstruct', 'METHODS']

METHODS = ('least_squares', 'bias_compensation')
_CONV_TYPES = (nn.Conv1d, nn.Conv2d)


# -- consumers ----------------------------------------------------------------
@dataclass
class _Group:
    """One solve: the kept output ``rows`` of one conv group; ``cols``: the
    columns of the ``(C_out, C_in/groups * k)`` weight fed by kept inputs,
    ``xcols``: the same in the patch matrix; ``r*``: removed inputs."""

    rows: torch.Tensor
    cols: torch.Tensor
    xcols: torch.Tensor
    rcols: torch.Tensor
    rxcols: torch.Tensor
    stats: LeastSquaresStats = field(default_factory=LeastSquaresStats)


@dataclass
class _Consumer:
    name: str
    module: nn.Module
    kept: torch.Tensor      # kept input channels (absolute)
    removed: torch.Tensor   # removed input channels (absolute)
    groups: list[_Group]
    bn: nn.Module | None    # BN directly after (intercept target)
    gen: torch.Generator
    dense: nn.Module                   # the layer in the dense copy
    dense_bn: nn.Module | None         # its BN in the dense copy
    report: dict[str, Any] = field(default_factory=dict)


def _unsupported(m: nn.Module, kind: str) -> str | None:
    bases = (nn.Linear,) if kind == 'linear' else \
        _CONV_TYPES if kind == 'conv' else ()
    base = next((c for c in bases if isinstance(m, c)), None)
    if base is not None and type(m).forward is base.forward:
        return None
    return (f'unsupported consumer type {type(m).__name__} (kind {kind!r}): '
            'only Conv1d, Conv2d and Linear with their own forward')


def _build_groups(name: str, m: nn.Module, keep_in: torch.Tensor,
                  keep_out: torch.Tensor) -> list[_Group]:
    g = getattr(m, 'groups', 1)
    ig, og = keep_in.numel() // g, keep_out.numel() // g
    kk = math.prod(getattr(m, 'kernel_size', (1,)))  # 1 for Linear
    taps = torch.arange(kk)
    kept_pos = torch.cumsum(keep_in.long(), 0) - 1     # position in X
    rem_pos = torch.cumsum((~keep_in).long(), 0) - 1   # position in X_removed
    res = []
    for j in range(g):
        rows = keep_out[j * og:(j + 1) * og].nonzero().reshape(-1) + j * og
        if not rows.numel():
            continue  # the whole group is pruned
        local = keep_in[j * ig:(j + 1) * ig]
        if not bool(local.any()):
            raise ValueError(
                f'reconstruct: consumer {name!r} has no kept input channels'
                + (f' in group {j}' if g > 1 else '') + ' but keeps output '
                'channels; nothing to reconstruct from (check the subnet)')

        cols = []
        for chans, pos in ((local.nonzero().reshape(-1), kept_pos),
                           ((~local).nonzero().reshape(-1), rem_pos)):
            cols.append((chans[:, None] * kk + taps).reshape(-1))
            cols.append((pos[chans + j * ig][:, None] * kk + taps).reshape(-1))
        res.append(_Group(rows, *cols))
    return res


def _find_consumers(pruner, dense, gmask, layers, seed):
    graph = pruner.graph
    called = {n.target for n in graph.gm.graph.nodes if n.op == 'call_module'}
    bn_after = dict(graph.conv_bn_pairs)
    consumers, skipped = {}, {}
    for i, (name, rec) in enumerate(graph.layers.items()):
        keep_in = graph.layer_keep(rec, gmask, 'in')
        if rec.kind == 'param' or keep_in is None or bool(keep_in.all()) \
                or (layers is not None and name not in layers):
            continue
        m = pruner.model.get_submodule(name)
        why = _unsupported(m, rec.kind)
        if why is None and name not in called:
            why = 'not called on the eval-mode tensor path'
        if why is not None:
            skipped[name] = why
            print_log(f'reconstruct: skipping {name}: {why}',
                      logger='current', level=30)
            continue
        keep_in = keep_in.reshape(-1).cpu()
        keep_out = graph.layer_keep(rec, gmask, 'out')
        keep_out = torch.ones(m.weight.shape[0], dtype=torch.bool) \
            if keep_out is None else keep_out.reshape(-1).cpu()
        bn = bn_after.get(name)
        if bn is not None and getattr(dense.get_submodule(bn),
                                      'running_mean', None) is None:
            bn = None
        consumers[name] = _Consumer(
            name, m, keep_in.nonzero().reshape(-1),
            (~keep_in).nonzero().reshape(-1),
            _build_groups(name, m, keep_in, keep_out),
            None if bn is None else pruner.model.get_submodule(bn),
            torch.Generator().manual_seed(seed + i),
            dense.get_submodule(name),
            None if bn is None else dense.get_submodule(bn))
    return consumers, skipped


# -- sampling and patches -----------------------------------------------------
def _sample(cons: _Consumer, batch: int, positions: int, n: int | None,
            device) -> torch.Tensor | None:
    """(B, n) output positions per image, or None for all of them."""
    if n is None or n >= positions:
        return None
    # with replacement: far cheaper than a permutation per image
    return torch.randint(positions, (batch, n), generator=cons.gen).to(device)


def _pick(flat: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
    """(B, C, L) values at positions ``idx`` -> (B * n, C) rows."""
    if idx is not None:
        flat = flat.gather(2, idx[:, None, :].expand(-1, flat.shape[1], -1))
    return flat.transpose(1, 2).reshape(-1, flat.shape[1])


def _conv_geometry(m: nn.Module):
    """Kernel, stride, dilation, (before, after) pads; Conv1d as 1 x L."""
    one = isinstance(m, nn.Conv1d)
    k, s, d = ((1,) * one + tuple(v)
               for v in (m.kernel_size, m.stride, m.dilation))
    if isinstance(m.padding, str):  # 'same' pads like torch: less before
        total = [0 if m.padding == 'valid' else dd * (kk - 1)
                 for kk, dd in zip(k, d)]
        return k, s, d, [(t // 2, t - t // 2) for t in total]
    return k, s, d, [(p, p) for p in (0,) * one + tuple(m.padding)]


def _conv_patches(m: nn.Module, x: torch.Tensor, chans: torch.Tensor,
                  out_hw: tuple[int, int], idx: torch.Tensor | None
                  ) -> torch.Tensor:
    """Input patches of ``chans`` at output positions: (P, len(chans)*k)."""
    (kh, kw), (sh, sw), (dh, dw), ((t, b), (lf, r)) = _conv_geometry(m)
    if x.ndim == 3:
        x = x[:, :, None]
    x = x.index_select(1, chans.to(x.device))
    if t or b or lf or r:
        mode = 'constant' if m.padding_mode == 'zeros' else m.padding_mode
        x = F.pad(x, (lf, r, t, b), mode=mode)
    bsz, c, hp, wp = x.shape
    hout, wout = out_hw
    if idx is None:
        idx = torch.arange(hout * wout, device=x.device).expand(bsz, -1)
    oy, ox = idx // wout * sh, idx % wout * sw
    flat = x.reshape(bsz, c, hp * wp)
    cols = []
    for ky in range(kh):
        for kx in range(kw):
            pos = (oy + ky * dh) * wp + ox + kx * dw
            cols.append(flat.gather(2, pos[:, None, :].expand(-1, c, -1)))
    p = torch.stack(cols, 2)                      # (B, C, k, n)
    return p.permute(0, 3, 1, 2).reshape(-1, c * kh * kw)


def _rows(cons: _Consumer, x: torch.Tensor, out: torch.Tensor,
          n_points: int | None, chans: torch.Tensor
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sampled input patches of ``chans`` and dense output rows."""
    m = cons.module
    if isinstance(m, nn.Linear):
        xf = x.reshape(x.shape[0], -1, x.shape[-1]).transpose(1, 2)
        of = out.reshape(out.shape[0], -1, out.shape[-1]).transpose(1, 2)
        idx = _sample(cons, xf.shape[0], xf.shape[2], n_points, x.device)
        return (_pick(xf, idx).index_select(1, chans.to(x.device)),
                _pick(of, idx))
    hw = (1, out.shape[-1]) if out.ndim == 3 else tuple(out.shape[-2:])
    idx = _sample(cons, x.shape[0], hw[0] * hw[1], n_points, x.device)
    return (_conv_patches(m, x, chans, hw, idx),
            _pick(out.reshape(out.shape[0], out.shape[1], -1), idx))


# -- solves -------------------------------------------------------------------
@torch.no_grad()
def _apply_offset(cons: _Consumer, offset: torch.Tensor) -> str:
    """Make the layer's output the dense one's plus ``offset`` (C_out,):
    through its bias, else the running mean of the BN right after it, else
    a new bias parameter (set from the dense originals, so that a module
    called twice is not shifted twice)."""
    m = cons.module
    offset = offset.to(m.weight.dtype).to(m.weight.device)
    if cons.dense.bias is not None:
        m.bias.copy_(cons.dense.bias + offset)
        return 'bias'
    if cons.bn is not None:
        rm = cons.dense_bn.running_mean
        cons.bn.running_mean.copy_(rm - offset.to(rm.dtype))
        return 'bn'
    if m.bias is None:
        m.bias = nn.Parameter(torch.zeros_like(offset),
                              requires_grad=m.weight.requires_grad)
    m.bias.copy_(offset)
    return 'new_bias'


@torch.no_grad()
def _refit(cons: _Consumer, ridge: float) -> None:
    m = cons.module
    wmat = m.weight.detach().reshape(m.weight.shape[0], -1).double()
    offset = torch.zeros(wmat.shape[0], dtype=torch.float64)
    before = after = total = points = 0
    for grp in cons.groups:
        s = grp.stats
        if not s:
            continue
        w0 = wmat[grp.rows][:, grp.cols].T.cpu()
        w, b = s.solve(ridge)
        before += s.sq_error(w0)
        after += s.sq_error(w, b)
        total += s.target_sq_norm
        points = s.n
        wmat[grp.rows[:, None], grp.cols] = w.T.to(wmat.device)
        offset[grp.rows] = b
    m.weight.copy_(wmat.reshape(m.weight.shape).to(m.weight.dtype))
    cons.report.update(
        sq_error_before=before, sq_error_after=after,
        rel_error_before=before / max(total, 1e-30),
        rel_error_after=after / max(total, 1e-30), points=points,
        kept_in=int(cons.kept.numel()),
        in_channels=int(cons.kept.numel() + cons.removed.numel()),
        offset_to=_apply_offset(cons, offset))


# -- graph execution ----------------------------------------------------------
class _Walker:
    """Runs the pruner's FX graph node by node on the masked model and on a
    dense copy, for a group of calibration batches at once."""

    def __init__(self, gm: fx.GraphModule, model: nn.Module,
                 dense: nn.Module, inputs: list[torch.Tensor]):
        self.gm, self.inputs = gm, inputs
        self.roots = {'m': model, 'd': dense}
        self.nodes = [n for n in gm.graph.nodes if n.op != 'output']
        self.pos = {n: i for i, n in enumerate(self.nodes)}
        self.free_at: dict[int, list[fx.Node]] = {}
        for i, n in enumerate(self.nodes):
            last = max((self.pos[u] for u in n.users if u in self.pos),
                       default=i)
            self.free_at.setdefault(last, []).append(n)
        self.first = next(n for n in self.nodes if n.op == 'placeholder')
        self._mods: dict[tuple[str, str], nn.Module] = {}

    def _fetch(self, root: str, target: str):
        obj: Any = self.roots[root]
        try:
            for part in target.split('.'):
                obj = getattr(obj, part)
        except AttributeError:  # a constant the tracer stored on gm
            obj = self.gm
            for part in target.split('.'):
                obj = getattr(obj, part)
        return obj

    def _run(self, node: fx.Node, root: str, env, j: int, b: int):
        if node.op == 'placeholder':
            if node is self.first:
                return self.inputs[b]
            return node.args[0] if node.args else None
        if node.op == 'get_attr':
            return self._fetch(root, node.target)
        args = fx.node.map_arg(node.args, lambda a: env[a][j])
        kwargs = fx.node.map_arg(node.kwargs, lambda a: env[a][j])
        if node.op == 'call_module':
            key = (root, node.target)
            if key not in self._mods:
                self._mods[key] = self.roots[root].get_submodule(node.target)
            return self._mods[key](*args, **kwargs)
        if node.op == 'call_function':
            return node.target(*args, **kwargs)
        return getattr(args[0], node.target)(*args[1:], **kwargs)

    def walk(self, group: list[int], stop: int, masked: bool,
             stops: set[fx.Node]):
        """Yield ``(node, masked env, dense env, dense outputs)`` at every
        node in ``stops`` before its masked run (the caller may refit it).
        ``self.peak`` records the peak bytes of live activations."""
        envm: dict[fx.Node, list] = {}
        envd: dict[fx.Node, list] = {}
        live, size, self.peak = 0, {}, 0
        for i, node in enumerate(self.nodes[:stop + 1]):
            outd = [self._run(node, 'd', envd, j, b)
                    for j, b in enumerate(group)]
            if node in stops:
                yield node, envm, envd, outd
            envd[node] = outd
            if masked:
                envm[node] = [self._run(node, 'm', envm, j, b)
                              for j, b in enumerate(group)]
            size[node] = (1 + masked) * sum(
                t.numel() * t.element_size() for t in outd
                if isinstance(t, torch.Tensor)) if node.op != 'get_attr' else 0
            live += size[node]
            self.peak = max(self.peak, live)
            for n in self.free_at.get(i, ()):
                envd.pop(n, None)
                envm.pop(n, None)
                live -= size.pop(n, 0)


# -- public entry -------------------------------------------------------------
def _inputs_of(model: nn.Module, batch) -> torch.Tensor:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, dict):  # mmengine data batch
        return model.data_preprocessor(batch, False)['inputs']
    if isinstance(batch, (tuple, list)) and batch and \
            isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise TypeError('batches: expected tensors, (inputs, labels) pairs or '
                    f'mmengine data dicts, got {type(batch).__name__}')


def _check(method, num_batches, ridge, points_per_image, max_cache_mb):
    if method not in METHODS:
        raise ValueError(f'method must be one of {METHODS}, got {method!r}')
    for name, v in (('num_batches', num_batches),
                    ('points_per_image',
                     1 if points_per_image is None else points_per_image)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f'{name} must be a positive int, got {v!r}')
    check_ridge(ridge)
    if not isinstance(max_cache_mb, (int, float)) or max_cache_mb < 0:
        raise ValueError(f'max_cache_mb must be >= 0, got {max_cache_mb!r}')


def _check_reference(reference, model: nn.Module) -> nn.Module:
    if not isinstance(reference, nn.Module) or reference is model:
        raise ValueError('reference: expected a separate nn.Module of the '
                         'same definition as pruner.model, got '
                         + ('pruner.model itself' if reference is model
                            else type(reference).__name__))
    mine = {k: tuple(v.shape) for k, v in model.named_parameters()}
    theirs = {k: tuple(v.shape) for k, v in reference.named_parameters()}
    if mine != theirs:
        diff = sorted(set(mine.items()) ^ set(theirs.items()))[:4]
        raise ValueError('reference: its parameters differ from '
                         f'pruner.model\'s (names / shapes), e.g. {diff}')
    return reference


def reconstruct(pruner, batches: Iterable, method: str = 'least_squares',
                num_batches: int = 20, ridge: float = 1e-5,
                bn_recalib: bool = True, points_per_image: int | None = 32,
                layers: Iterable[str] | None = None, seed: int = 0,
                max_cache_mb: float = 2048,
                reference: nn.Module | None = None) -> dict[str, Any]:
    """Refit the layers that consume pruned channels, then recalibrate BN.

    Call after ``pruner.set_subnet(subnet)`` and before fine-tuning; the
    masked model is updated in place (see the module docstring for the
    methods).

    Args:
        pruner: A :class:`~mmrazor_ext.pruners.ChannelPruner` in masked mode.
        batches: Calibration batches of a single-input model: input
            tensors, ``(inputs, labels)`` pairs or mmengine data dicts. The
            first ``num_batches`` are read once and kept (inputs only).
        method: ``'least_squares'`` or ``'bias_compensation'``.
        num_batches: Number of batches to use (>= 1).
        ridge: Ridge strength relative to the mean diagonal of each centred
            Gram matrix (``lambda = ridge * trace(G) / D``); 0 is plain least
            squares (minimum-norm when singular).
        bn_recalib: Re-estimate BatchNorm statistics on the same batches
            afterwards (:func:`mmrazor_ext.utils.recalibrate_bn`).
        points_per_image: Output positions sampled per image and consumer
            (seeded); ``None`` uses every position.
        layers: Only refit these consumers (default: all).
        seed: Seed of the position sampling.
        max_cache_mb: Memory allowed for the activations of all batches at
            one point of the graph; above it each consumer re-runs the
            forward prefix per batch (same result, slower).
        reference: The network whose layer outputs are the targets: a model
            of the same definition as ``pruner.model`` (its masks, if any,
            are kept; it is not modified). Default: a dense copy of
            ``pruner.model`` (masks removed). Give the model as it was
            before the pruning step when the current weights of the pruned
            channels are not the ones to reproduce (iterative pruning after
            fine-tuning, weights replaced after the search).

    Returns:
        A report: ``method``, ``num_batches``, ``ridge``, ``cached``,
        ``seconds``, ``bn_recalibrated`` (batches), ``skipped`` ({layer:
        reason}) and ``layers`` ({layer: {rel_error_before, rel_error_after,
        sq_error_before, sq_error_after, points, kept_in, in_channels,
        offset_to}}; bias compensation reports ``offset_norm`` instead of
        errors). Errors are squared output errors against the dense layer on
        the sampled points, "before" measured on the inputs from the already
        refitted upstream network; relative ones are divided by the dense
        output's squared norm.

    Raises:
        ValueError: Bad ``method`` / ``num_batches`` / ``ridge`` /
            ``reference``, no batches, no pruned channels (``set_subnet``
            not called) or a consumer without kept input channels.
    """
    t0 = time.perf_counter()
    _check(method, num_batches, ridge, points_per_image, max_cache_mb)
    subnet = getattr(pruner, 'subnet', None)
    if not subnet or all(bool(torch.as_tensor(m).all())
                         for m in subnet.values()):
        raise ValueError('reconstruct: pruner.subnet prunes no channels; call '
                         'pruner.set_subnet(subnet) first')
    if len(getattr(pruner, 'example_inputs', ())) > 1:
        raise ValueError('reconstruct: only single-input models are supported')
    layers = None if layers is None else set(layers)
    if layers is not None and layers - set(pruner.graph.layers):
        raise ValueError(f'layers: unknown layers '
                         f'{sorted(layers - set(pruner.graph.layers))}')
    model = pruner.model
    ref = next(iter(model.parameters()), None)
    device = ref.device if ref is not None else torch.device('cpu')
    inputs = []
    for batch in batches:
        if len(inputs) == num_batches:
            break
        inputs.append(_inputs_of(model, batch).to(device))
    if not inputs:
        raise ValueError('batches: the calibration iterable yielded no '
                         'batches')
    if reference is None:
        dense = copy.deepcopy(model)
        remove_masks(dense)
    else:
        dense = _check_reference(reference, model)
    consumers, skipped = _find_consumers(
        pruner, dense, pruner.graph.global_mask(subnet), layers, seed)
    walker = _Walker(pruner.graph.gm, model, dense, inputs)
    stops = {n for n in walker.nodes
             if n.op == 'call_module' and n.target in consumers}
    last = max((walker.pos[n] for n in stops), default=-1)
    cached = None
    training, dense_training = model.training, dense.training
    model.eval()
    dense.eval()
    try:
        with torch.no_grad():
            if stops and method == 'bias_compensation':
                _bias_compensation(walker, consumers, stops, last,
                                   points_per_image, len(inputs))
            elif stops:
                for _ in walker.walk([0], last, True, set()):
                    pass  # one batch: measure the live activations
                cached = walker.peak * len(inputs) <= max_cache_mb * 2 ** 20
                _least_squares(walker, consumers, stops, last, ridge,
                               points_per_image, cached, len(inputs))
    finally:
        model.train(training)
        dense.train(dense_training)
    used = recalibrate_bn(model, [(x, None) for x in inputs],
                          num_batches=len(inputs)) if bn_recalib else 0
    report = {'method': method, 'num_batches': len(inputs), 'ridge': ridge,
              'cached': cached, 'bn_recalibrated': used, 'skipped': skipped,
              'layers': {n: c.report for n, c in consumers.items()},
              'seconds': time.perf_counter() - t0}
    errs = [(r['rel_error_before'], r['rel_error_after'])
            for r in report['layers'].values() if 'rel_error_after' in r]
    if errs:
        print_log(f'reconstruct: {len(errs)} consumers refitted in '
                  f"{report['seconds']:.1f} s, mean relative output error "
                  f'{sum(e[0] for e in errs) / len(errs):.4g} -> '
                  f'{sum(e[1] for e in errs) / len(errs):.4g}',
                  logger='current')
    return report


def _bias_compensation(walker, consumers, stops, last, n_points, n_batches):
    sums: dict[str, Any] = {}
    for b in range(n_batches):
        for node, _, envd, outd in walker.walk([b], last, False, stops):
            cons = consumers[node.target]
            xr, _ = _rows(cons, envd[node.args[0]][0], outd[0], n_points,
                          cons.removed)
            acc = sums.setdefault(cons.name, [0, 0])
            acc[0] = acc[0] + xr.double().sum(0).cpu()
            acc[1] += xr.shape[0]
    for name, (total, count) in sums.items():
        cons = consumers[name]
        mean = total / max(count, 1)
        w = cons.module.weight.detach()
        wmat = w.reshape(w.shape[0], -1).double().cpu()
        offset = torch.zeros(wmat.shape[0], dtype=torch.float64)
        for grp in cons.groups:
            if grp.rcols.numel():
                offset[grp.rows] = wmat[grp.rows][:, grp.rcols] @ \
                    mean[grp.rxcols]
        cons.report.update(
            offset_norm=float(offset.norm()), kept_in=int(cons.kept.numel()),
            in_channels=int(cons.kept.numel() + cons.removed.numel()),
            offset_to=_apply_offset(cons, offset))


def _least_squares(walker, consumers, stops, last, ridge, n_points, cached,
                   n_batches):
    def accumulate(node, envm, outd, j):
        cons = consumers[node.target]
        x, y = envm[node.args[0]][j], outd[j]
        bias = cons.dense.bias
        if bias is not None:  # the target is the dense output minus bias
            y = y - (bias if isinstance(cons.module, nn.Linear) else
                     bias.reshape((1, -1) + (1,) * (y.ndim - 2)))
        xs, ys = _rows(cons, x, y, n_points, cons.kept)
        for grp in cons.groups:
            grp.stats.update(xs[:, grp.xcols.to(xs.device)],
                             ys[:, grp.rows.to(ys.device)])

    if cached:
        for node, envm, _, outd in walker.walk(list(range(n_batches)), last,
                                               True, stops):
            for j in range(n_batches):
                accumulate(node, envm, outd, j)
            _refit(consumers[node.target], ridge)
        return
    for stop in sorted(walker.pos[n] for n in stops):
        target = walker.nodes[stop]
        for b in range(n_batches):
            for node, envm, _, outd in walker.walk([b], stop, True,
                                                   {target}):
                accumulate(node, envm, outd, 0)
        _refit(consumers[target.target], ridge)
