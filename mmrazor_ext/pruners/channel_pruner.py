"""ChannelPruner: the seed API on top of the channel graph.

``ratio`` always means the fraction of units **removed** from a space.
"""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from mmengine.logging import print_log
from torch import nn

from mmrazor_ext.estimators import get_model_complexity
from mmrazor_ext.graph import (
    ChannelGraph,
    ExportError,
    apply_masks,
    check_equivalence,
    export_pruned,
    fuse_conv_bn,
    remove_masks,
)
from mmrazor_ext.registry import METRICS, PRUNERS
from mmrazor_ext.utils.io import atomic_write

__all__ = ['ChannelPruner', 'load_subnet']

_FORMAT = 'mmrazor_ext.subnet'


def _check_ratio(r: Any, what: str = 'ratio') -> float:
    if isinstance(r, bool) or not isinstance(r, (int, float)) or \
            not 0 <= float(r) < 1 or math.isnan(float(r)):
        raise ValueError(f'{what} must be in [0, 1) (fraction of channels '
                         f'removed), got {r!r}')
    return float(r)


@PRUNERS.register_module()
class ChannelPruner:
    """Structured channel pruner for any traceable CNN.

    Args:
        model: The model to prune (an mmpretrain ``ImageClassifier`` is
            analysed on its tensor path backbone -> neck -> head).
        example_inputs: Tensor (or tuple) for one forward pass, e.g.
            ``torch.randn(1, 3, 32, 32)``.
        ignore_layers: Layer names / prefixes / globs whose output channels
            are never pruned (network outputs are never pruned anyway).
        divisor: Kept channel counts are rounded to multiples of this
            (e.g. 8 for hardware-friendly widths).
        round_to: Alias of ``divisor``.
        min_channels: Minimum units kept per space.
        leaf_modules: Extra leaf modules for the tracer.
        trace_train: Also analyse the train-mode graph when it differs.

    Attributes:
        graph: The :class:`~mmrazor_ext.graph.ChannelGraph`.
        channel_spaces: ``{name: ChannelSpace}``.
        build_time: Seconds spent building the graph.
    """

    def __init__(self, model: nn.Module,
                 example_inputs: torch.Tensor | Sequence[torch.Tensor],
                 ignore_layers: Iterable[str] = (), divisor: int = 1,
                 round_to: int | None = None, min_channels: int = 1,
                 leaf_modules: Iterable[type | str] = (),
                 trace_train: bool = True):
        if example_inputs is None:
            raise ValueError('ChannelPruner needs example_inputs')
        if isinstance(example_inputs, torch.Tensor):
            example_inputs = (example_inputs,)
        self.model = model
        self.example_inputs = tuple(example_inputs)
        self.ignore_layers = tuple(ignore_layers)
        self.divisor = int(round_to if round_to is not None else divisor)
        if self.divisor < 1:
            raise ValueError(f'divisor must be >= 1, got {self.divisor}')
        self.min_channels = max(1, int(min_channels))
        self.leaf_modules = tuple(leaf_modules)
        t0 = time.perf_counter()
        self.graph = ChannelGraph(model, self.example_inputs,
                                  ignore_layers=self.ignore_layers,
                                  leaf_modules=self.leaf_modules,
                                  trace_train=trace_train)
        self.build_time = time.perf_counter() - t0
        self.subnet: dict[str, torch.Tensor] | None = None
        self.last_export_report: dict | None = None
        self.last_flops_report: dict | None = None
        self._layer_flops: dict[str, int] | None = None
        self._layer_params: dict[str, tuple] | None = None
        self._fixed_flops = 0
        self._total_flops = 0

    # -- spaces / metrics ---------------------------------------------------------
    @property
    def channel_spaces(self):
        """``{name: ChannelSpace}`` of all prunable spaces."""
        return self.graph.spaces

    def get_metric_local(self, metric_name: str | dict,
                         contents: Mapping[str, Any] | None = None
                         ) -> dict[str, torch.Tensor]:
        """Channel scores from a metric in the ``METRICS`` registry.

        Args:
            metric_name: Registered name (``'l1'``) or a config dict
                ``dict(type='l1', ...)``.
            contents: ``{layer name: weight or collected features}``;
                ``None`` lets the metric use the model's weights.

        Returns:
            ``{space name: score tensor (num_channels,)}``.
        """
        cfg = dict(metric_name) if isinstance(metric_name, dict) else \
            {'type': metric_name}
        name = cfg.pop('type')
        cls = METRICS.get(name) if isinstance(name, str) else name
        if cls is None:
            raise KeyError(f'metric {name!r} is not in the METRICS registry '
                           f'(known: {sorted(METRICS.module_dict)})')
        metric = cls(**cfg)
        return metric(self.graph, self.model,
                      dict(contents) if contents is not None else None)

    # -- sampling -------------------------------------------------------------------
    def _scores(self, scores):
        res = {}
        for name, space in self.channel_spaces.items():
            s = None if scores is None else scores.get(name)
            if s is None:
                # no score: keep the first channels (deterministic)
                s = torch.arange(space.num_channels, 0, -1).float()
            s = torch.as_tensor(s).detach().float().reshape(-1).cpu()
            if s.numel() != space.num_channels:
                raise ValueError(f'scores of space {name!r} have {s.numel()} '
                                 f'entries, expected {space.num_channels}')
            res[name] = s
        return res

    def _round_keep(self, space, keep: int) -> int:
        n = space.num_channels
        div = max(1, self.divisor // max(1, space.unit_size))
        if div > 1 and n >= div:
            keep = max(div, int(round(keep / div)) * div)
        keep = max(keep, min(self.min_channels, n), 1)
        return min(keep, n)

    @staticmethod
    def _top(scores: torch.Tensor, keep: int) -> torch.Tensor:
        mask = torch.zeros(scores.numel(), dtype=torch.bool)
        # stable: among equal scores the earlier channel wins
        order = torch.argsort(-scores, stable=True)[:keep]
        mask[order] = True
        return mask

    def sample_subnet_uniform(self, ratio: float,
                              scores: Mapping[str, torch.Tensor] | None = None
                              ) -> dict[str, torch.Tensor]:
        """Remove the same fraction of units from every space.

        Args:
            ratio: Fraction removed, in [0, 1).
            scores: ``{space: score}``; higher is kept first.

        Returns:
            ``{space name: bool keep mask}``.
        """
        return self.sample_subnet_nonuni(
            {n: ratio for n in self.channel_spaces}, scores)

    def sample_subnet_nonuni(self, ratios: Mapping[str, float],
                             scores: Mapping[str, torch.Tensor] | None = None
                             ) -> dict[str, torch.Tensor]:
        """Remove ``ratios[space]`` of every space's units (0 if missing)."""
        unknown = set(ratios) - set(self.channel_spaces)
        if unknown:
            raise KeyError(f'unknown channel spaces: {sorted(unknown)}')
        scores = self._scores(scores)
        subnet = {}
        for name, space in self.channel_spaces.items():
            r = _check_ratio(ratios.get(name, 0.0), f'ratio of {name!r}')
            keep = self._round_keep(
                space, int(round(space.num_channels * (1 - r))))
            subnet[name] = self._top(scores[name], keep)
        return subnet

    def sample_subnet_diff(self, ratio: float,
                           scores: Mapping[str, torch.Tensor] | None = None
                           ) -> dict[str, torch.Tensor]:
        """One global threshold over scores normalised per space.

        Each space's scores are divided by their maximum, the lowest
        ``ratio`` of all units are removed, then per-space minimum and
        divisor constraints are applied.
        """
        ratio = _check_ratio(ratio)
        scores = self._scores(scores)
        norm = {n: s / s.max() if float(s.max()) > 0 else torch.ones_like(s)
                for n, s in scores.items()}
        return self._threshold_subnet(norm, ratio)

    def _threshold_subnet(self, norm, ratio):
        if not norm:
            return {}
        flat = torch.cat(list(norm.values()))
        n_remove = int(round(ratio * flat.numel()))
        if n_remove == 0:
            return {n: torch.ones_like(s, dtype=torch.bool)
                    for n, s in norm.items()}
        thr = torch.sort(flat, stable=True).values[n_remove - 1]
        subnet = {}
        for name, s in norm.items():
            keep = int((s > thr).sum())
            keep = self._round_keep(self.channel_spaces[name], keep)
            subnet[name] = self._top(s, keep)
        return subnet

    # -- FLOPs ------------------------------------------------------------------------
    def _ensure_flops(self):
        if self._layer_flops is not None:
            return
        res = get_model_complexity(self.model, self.example_inputs,
                                   per_layer=True,
                                   leaf_modules=self.leaf_modules)
        self._total_flops = res['flops']
        self._layer_flops = {}
        counted = 0
        for name, rec in self.graph.layers.items():
            if name in res['layers'] and rec.kind != 'param':
                f = res['layers'][name]['flops']
                self._layer_flops[name] = f
                counted += f
        self._fixed_flops = self._total_flops - counted

    def estimate_flops(self, subnet: Mapping[str, torch.Tensor] | None = None
                       ) -> int:
        """MACs of the exported model for ``subnet`` (exact for conv,
        linear and norm layers; other ops are not affected by pruning)."""
        self._ensure_flops()
        g = self.graph.global_mask(subnet)
        total = float(self._fixed_flops)
        for name, f in self._layer_flops.items():
            rec = self.graph.layers[name]
            fo = 1.0 if rec.out_index is None else \
                float(g[rec.out_index].float().mean())
            fi = 1.0 if rec.in_index is None else \
                float(g[rec.in_index].float().mean())
            m = None
            if rec.kind == 'conv':
                m = self.model.get_submodule(name)
            if rec.kind in ('conv', 'linear', 'conv_transpose'):
                if m is not None and m.groups > 1:
                    total += f * fo  # whole groups: per-group fan-in kept
                else:
                    total += f * fo * fi
            else:
                total += f * fo
        return int(round(total))

    def estimate_params(self, subnet: Mapping[str, torch.Tensor] | None = None
                        ) -> int:
        """Parameters of the exported model for ``subnet``, without exporting.

        Weights scale with the kept fraction of their output and input
        channels (output only for grouped convs and norm layers); biases and
        norm affine parameters with the output fraction.
        """
        self._ensure_flops()
        if self._layer_params is None:
            self._layer_params = {}
            for name, rec in self.graph.layers.items():
                if rec.kind == 'param':
                    continue
                try:
                    m = self.model.get_submodule(name)
                except AttributeError:
                    continue
                w = getattr(m, 'weight', None)
                w = w.numel() if isinstance(w, torch.Tensor) else 0
                rest = sum(p.numel() for p in m.parameters(recurse=False))
                self._layer_params[name] = (w, rest - w,
                                            getattr(m, 'groups', 1))
        total_params = sum(p.numel() for p in self.model.parameters())
        g = self.graph.global_mask(subnet)
        total = float(total_params)
        for name, (w, rest, groups) in self._layer_params.items():
            rec = self.graph.layers[name]
            fo = 1.0 if rec.out_index is None else \
                float(g[rec.out_index].float().mean())
            fi = 1.0 if rec.in_index is None else \
                float(g[rec.in_index].float().mean())
            if rec.kind in ('conv', 'linear', 'conv_transpose') and \
                    groups == 1:
                kept_w = w * fo * fi
            else:
                kept_w = w * fo
            total -= (w + rest) - (kept_w + rest * fo)
        return int(round(total))

    @property
    def original_flops(self) -> int:
        self._ensure_flops()
        return self._total_flops

    def sample_subnet_for_flops(self, flops_ratio: float,
                                scores: Mapping[str, torch.Tensor] | None = None,
                                mode: str = 'uniform', tol: float = 0.01,
                                verify: bool = True
                                ) -> dict[str, torch.Tensor]:
        """Bisect the pruning ratio until pruned/original FLOPs hits
        ``flops_ratio`` (0.5 = 2x fewer MACs) within ``tol`` (relative).

        Args:
            flops_ratio: Target FLOPs fraction in (0, 1].
            scores: Space scores.
            mode: ``'uniform'`` (same ratio per space) or ``'global'`` (one
                threshold, :meth:`sample_subnet_diff`).
            tol: Relative tolerance on the FLOPs fraction.
            verify: Export once and measure the FLOPs of the sliced model
                (reported in ``last_flops_report``).

        Returns:
            The subnet. If channel granularity makes the tolerance
            unreachable by bisection, units are added back one at a time in
            order of normalised score (highest first) until it is met.
        """
        if not 0 < flops_ratio <= 1:
            raise ValueError(f'flops_ratio must be in (0, 1], got '
                             f'{flops_ratio!r}')
        if mode not in ('uniform', 'global'):
            raise ValueError(f"mode must be 'uniform' or 'global', got "
                             f'{mode!r}')
        scores = self._scores(scores)
        total = self.original_flops
        sample = (self.sample_subnet_uniform if mode == 'uniform'
                  else self.sample_subnet_diff)

        def frac(sub):
            return self.estimate_flops(sub) / total

        lo, hi = 0.0, 0.999  # ratio lo: flops >= target; hi: below
        best = sample(0.0, scores)
        best_err = abs(frac(best) / flops_ratio - 1)
        below = None
        for _ in range(40):
            mid = (lo + hi) / 2
            sub = sample(mid, scores)
            f = frac(sub)
            err = abs(f / flops_ratio - 1)
            if err < best_err:
                best, best_err = sub, err
            if best_err <= tol:
                break
            if f > flops_ratio:
                lo = mid
            else:
                hi, below = mid, sub
            if hi - lo < 1e-6:
                break
        if best_err > tol and below is not None:
            best, best_err = self._fill_up(below, scores, flops_ratio, tol,
                                           best, best_err)
        achieved = self.estimate_flops(best)
        report = {'target_ratio': flops_ratio, 'mode': mode,
                  'estimated_ratio': achieved / total,
                  'original_flops': total, 'estimated_flops': achieved}
        if verify:
            was = self.subnet
            self.set_subnet(best)
            small = self.export(check=False)
            measured = get_model_complexity(
                small, self.example_inputs,
                leaf_modules=self.leaf_modules)['flops']
            report['exported_flops'] = measured
            report['exported_ratio'] = measured / total
            if was is None:
                self.clear_subnet()
            else:
                self.set_subnet(was)
        self.last_flops_report = report
        if best_err > tol:
            print_log(f'sample_subnet_for_flops: closest FLOPs ratio '
                      f'{achieved / total:.4f} for target {flops_ratio}',
                      logger='current', level=30)
        return best

    def _fill_up(self, below, scores, flops_ratio, tol, best, best_err):
        """Add pruned units back, best normalised score first, in steps of
        the divisor so that kept counts stay multiples of it."""
        total = self.original_flops
        chunks = []
        for name, mask in below.items():
            space = self.channel_spaces[name]
            step = max(1, self.divisor // max(1, space.unit_size))
            s = scores[name]
            s = s / s.max() if float(s.max()) > 0 else torch.ones_like(s)
            pruned = (~mask).nonzero().reshape(-1)
            pruned = pruned[torch.argsort(-s[pruned], stable=True)]
            for i in range(0, pruned.numel() - step + 1, step):
                idx = pruned[i:i + step]
                chunks.append((float(s[idx[0]]), name, idx))
        chunks.sort(key=lambda t: -t[0])
        cur = {k: v.clone() for k, v in below.items()}
        for _, name, idx in chunks:
            cur[name][idx] = True
            f = self.estimate_flops(cur) / total
            err = abs(f / flops_ratio - 1)
            if err < best_err:
                best = {k: v.clone() for k, v in cur.items()}
                best_err = err
            if err <= tol or f > flops_ratio * (1 + tol):
                break
        return best, best_err

    # -- masked mode ------------------------------------------------------------------
    def _normalise_subnet(self, subnet):
        unknown = set(subnet) - set(self.channel_spaces)
        if unknown:
            raise KeyError(f'unknown channel spaces in subnet: '
                           f'{sorted(unknown)}')
        res = {}
        for name, space in self.channel_spaces.items():
            m = subnet.get(name)
            if m is None:
                res[name] = torch.ones(space.num_channels, dtype=torch.bool)
                continue
            m = torch.as_tensor(m)
            if m.dtype != torch.bool:  # kept indices
                idx = m.long().reshape(-1)
                m = torch.zeros(space.num_channels, dtype=torch.bool)
                m[idx] = True
            m = m.reshape(-1).cpu()
            if m.numel() != space.num_channels:
                raise ValueError(f'mask of space {name!r} has {m.numel()} '
                                 f'entries, expected {space.num_channels}')
            if not bool(m.any()):
                raise ValueError(f'mask of space {name!r} removes every '
                                 'channel')
            res[name] = m.clone()
        return res

    def set_subnet(self, subnet: Mapping[str, Any]) -> None:
        """Put the model into masked mode.

        Args:
            subnet: ``{space name: bool keep mask}`` (or kept indices);
                missing spaces keep everything.
        """
        subnet = self._normalise_subnet(subnet)
        for name, m in subnet.items():
            self.channel_spaces[name].out_mask = m
        self.subnet = subnet
        apply_masks(self.model, self.graph, self.graph.global_mask(subnet))

    def clear_subnet(self) -> None:
        """Remove the masks; the model is dense again."""
        remove_masks(self.model)
        for space in self.channel_spaces.values():
            space.out_mask = torch.ones(space.num_channels, dtype=torch.bool)
        self.subnet = None

    def _random_inputs(self):
        gen = torch.Generator().manual_seed(0)
        res = []
        for x in self.example_inputs:
            if isinstance(x, torch.Tensor) and x.is_floating_point():
                res.append(torch.randn(x.shape, generator=gen,
                                       dtype=x.dtype).to(x.device))
            else:
                res.append(x)
        return tuple(res)

    def export(self, fuse_bn: bool = False, check: bool = True,
               rtol: float = 1e-5) -> nn.Module:
        """Physically sliced deep copy of the (masked) model.

        The copy's eval-mode outputs are compared with the masked model's on
        random inputs of the example shape; the result is stored in
        ``last_export_report`` and logged.

        Args:
            fuse_bn: Also fold BatchNorm layers into their convs.
            check: Run the equivalence check (raise on failure).
            rtol: Allowed max abs difference relative to the output scale.

        Raises:
            ExportError: If the check fails.
        """
        gmask = self.graph.global_mask(self.subnet)
        small = export_pruned(self.model, self.graph, gmask)
        if fuse_bn:
            fuse_conv_bn(small, self.graph.conv_bn_pairs)
        if not check:
            return small
        report = check_equivalence(self.model, small, self._random_inputs(),
                                   rtol=rtol)
        self.last_export_report = report
        print_log(f"export: max abs diff {report['max_abs_diff']:.3g} "
                  f"(relative {report['rel_diff']:.3g}) vs masked model",
                  logger='current')
        if not report['ok']:
            raise ExportError(
                f"exported model differs from the masked model: max abs "
                f"diff {report['max_abs_diff']:.4g}, relative "
                f"{report['rel_diff']:.4g} > {rtol}")
        return small

    # -- persistence ------------------------------------------------------------------
    def save_subnet(self, path: str, weights: bool = True) -> str:
        """Save the structure (JSON: space -> kept indices) and, optionally,
        the exported weights (``<path without .json>.pth``).

        Both files are written to a temp file first and then renamed.

        Returns:
            ``path``.
        """
        subnet = self.subnet or self._normalise_subnet({})
        data = {
            'format': _FORMAT, 'version': 1,
            'example_inputs': [
                {'shape': list(x.shape), 'dtype': str(x.dtype)}
                for x in self.example_inputs],
            'ignore_layers': list(self.ignore_layers),
            'spaces': {
                name: {'num_channels': self.channel_spaces[name].num_channels,
                       'kept': m.nonzero().reshape(-1).tolist()}
                for name, m in subnet.items()},
        }
        if weights:
            wpath = os.path.splitext(path)[0] + '.pth'
            state = self.export().state_dict()
            atomic_write(wpath, lambda p: torch.save(state, p))
            data['weights'] = os.path.basename(wpath)

        def write_json(p):
            with open(p, 'w') as f:
                json.dump(data, f, indent=1)
        atomic_write(path, write_json)
        return path


def load_subnet(model: nn.Module, path: str,
                example_inputs: Sequence[torch.Tensor] | None = None,
                leaf_modules: Iterable[type | str] = (),
                load_weights: bool = True) -> nn.Module:
    """Rebuild a pruned model from its original definition.

    Args:
        model: A freshly built model of the original (unpruned) definition.
        path: JSON written by :meth:`ChannelPruner.save_subnet`.
        example_inputs: Override the stored example input shapes.
        leaf_modules: Leaf modules used when the subnet was saved.
        load_weights: Load the saved sliced weights if present.

    Returns:
        The physically pruned model.
    """
    with open(path) as f:
        data = json.load(f)
    if data.get('format') != _FORMAT:
        raise ValueError(f'{path} is not a saved subnet ({_FORMAT})')
    if example_inputs is None:
        example_inputs = tuple(
            torch.zeros(e['shape'], dtype=getattr(torch,
                                                  e['dtype'].split('.')[-1]))
            for e in data['example_inputs'])
        example_inputs = tuple(torch.randn(x.shape) if x.is_floating_point()
                               else x for x in example_inputs)
    pruner = ChannelPruner(model, example_inputs,
                           ignore_layers=data.get('ignore_layers', ()),
                           leaf_modules=leaf_modules)
    spaces = data['spaces']
    for name, entry in spaces.items():
        space = pruner.channel_spaces.get(name)
        if space is None or space.num_channels != entry['num_channels']:
            raise ValueError(
                f'{path}: space {name!r} does not match the model '
                f'(saved {entry["num_channels"]} channels, model has '
                f'{None if space is None else space.num_channels})')
    pruner.set_subnet({n: torch.tensor(e['kept'], dtype=torch.long)
                       for n, e in spaces.items()})
    small = pruner.export()
    pruner.clear_subnet()
    if load_weights and data.get('weights'):
        wpath = os.path.join(os.path.dirname(os.path.abspath(path)),
                             data['weights'])
        state = torch.load(wpath, map_location='cpu', weights_only=True)
        missing, unexpected = small.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ExportError(f'{wpath}: weights do not fit the rebuilt '
                              f'model (missing {missing[:5]}, unexpected '
                              f'{unexpected[:5]})')
    return small
