"""ChannelPruner: the seed API on top of the channel graph.

The class is a facade over one module per concept: :mod:`.sampling`
(scores and prune ratios -> keep masks, MACs-target search), :mod:`.cost`
(MACs / parameters of a subnet without exporting), :mod:`.subnet_io`
(the saved subnet file) and :mod:`.reconstruction` (refitting after
pruning). Naming: ``ratio`` in the seed API is a **prune
ratio** (fraction of a space's units removed); a keep ratio is ``1 -`` it;
``flops`` means MACs (multiply-accumulates).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from mmengine.logging import print_log
from torch import nn

from mmrazor_ext.estimators import get_model_complexity
from mmrazor_ext.graph import (
    LAYER_KINDS,
    ChannelGraph,
    ExportError,
    apply_masks,
    check_equivalence,
    export_pruned,
    fuse_conv_bn,
    remove_masks,
    traceable_view,
)
from mmrazor_ext.registry import METRICS, PRUNERS

from . import subnet_io
from .cost import SubnetCost
from .latency_sampling import sample_subnet_for_latency
from .latency_target import LatencyModel, latency_model_of
from .reconstruction import reconstruct
from .report import format_report, pinned_report
from .sampling import SubnetSampler, check_divisor

__all__ = ['ChannelPruner', 'load_subnet']


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
        divisor: ``'auto'`` (default): kept channel counts are multiples
            of 16 in spaces of >= 64 channels, of 8 in spaces of >= 32,
            free below (:data:`~.sampling.AUTO_DIVISOR_RULE`,
            :meth:`divisor_of`), widths that CPU and GPU kernels run
            without padding; an int rounds every space alike (1: no
            rounding, the exact counts of the seed's ratios). Measured in
            the README, "Widths and latency targets".
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
                 ignore_layers: Iterable[str] = (),
                 divisor: int | str = 'auto',
                 round_to: int | None = None, min_channels: int = 1,
                 leaf_modules: Iterable[type | str] = (),
                 trace_train: bool = True):
        if example_inputs is None:
            raise ValueError('ChannelPruner needs example_inputs')
        if isinstance(example_inputs, torch.Tensor):
            example_inputs = (example_inputs,)
        if next(iter(model.parameters()), None) is None:
            raise ValueError(f'ChannelPruner: model {type(model).__name__} '
                             'is empty: it has no parameters to prune')
        self.model = model
        self.example_inputs = tuple(example_inputs)
        self.ignore_layers = tuple(ignore_layers)
        self.divisor = check_divisor(round_to if round_to is not None
                                     else divisor)
        self.min_channels = max(1, int(min_channels))
        self.leaf_modules = tuple(leaf_modules)
        self.trace_train = bool(trace_train)
        t0 = time.perf_counter()
        self.graph = ChannelGraph(model, self.example_inputs,
                                  ignore_layers=self.ignore_layers,
                                  leaf_modules=self.leaf_modules,
                                  trace_train=trace_train)
        self.build_time = time.perf_counter() - t0
        why = self.graph.gm.meta.get('concrete_trace')
        if why:
            shapes = [tuple(x.shape) for x in self.example_inputs
                      if isinstance(x, torch.Tensor)]
            print_log(f'ChannelPruner: {type(model).__name__} was traced with '
                      f'the example input {shapes} (Python branches on sizes '
                      f'follow its shape); the symbolic trace failed: '
                      f'{why[:300]}', logger='current')
        if all(rec.kind == 'param' for rec in self.graph.layers.values()):
            raise ValueError(
                f'ChannelPruner: model {type(model).__name__} has no '
                f'prunable layers (none of the layer kinds '
                f'{sorted(LAYER_KINDS)} was called on the example inputs)')
        self.subnet: dict[str, torch.Tensor] | None = None
        self.last_export_report: dict | None = None
        self.last_flops_report: dict | None = None
        self.last_latency_report: dict | None = None
        self._cost: SubnetCost | None = None  # built on first use

    # -- spaces / metrics ---------------------------------------------------
    @property
    def channel_spaces(self):
        """``{name: ChannelSpace}`` of all prunable spaces."""
        return self.graph.spaces

    def report(self, log: bool = True, limit: int = 40) -> list:
        """Layers whose output channels are pinned (in no space) and why:
        output layer, ignored, leaf module without a rule, or a group
        constraint (tied to channels an op fixes); see
        :func:`~.report.pinned_report` (one more graph analysis, cached).

        Args:
            log: Also log the table (:func:`~.report.format_report`).
            limit: Rows in the logged table.

        Returns:
            ``[PinnedRow(layer, kind, channels, space, reason)]``.
        """
        rows = getattr(self, '_pinned_rows', None)
        if rows is None:
            rows = pinned_report(self.model, self.example_inputs, self.graph,
                                 self.ignore_layers, self.leaf_modules,
                                 self.trace_train)
            self._pinned_rows = rows
        if log:
            print_log(f'{type(self.model).__name__}: '
                      f'{len(self.channel_spaces)} channel spaces; pinned '
                      f'layers:\n{format_report(rows, limit)}',
                      logger='current')
        return rows

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

    # -- sampling -----------------------------------------------------------
    @property
    def sampler(self) -> SubnetSampler:
        """Keep-mask sampling with this pruner's divisor / minimum."""
        return SubnetSampler(self.channel_spaces, self.divisor,
                             self.min_channels)

    def divisor_of(self, space: str) -> int:
        """Channel divisor of space ``space`` (``'auto'`` resolved)."""
        return self.sampler.divisor_of(space)

    def sample_subnet_uniform(self, ratio: float,
                              scores: Mapping[str, torch.Tensor] | None = None
                              ) -> dict[str, torch.Tensor]:
        """Remove the same fraction of units from every space.

        Args:
            ratio: Prune ratio (fraction removed), in [0, 1).
            scores: ``{space: score}``; higher is kept first.

        Returns:
            ``{space name: bool keep mask}``.
        """
        return self.sampler.uniform(ratio, scores)

    def sample_subnet_nonuni(self, ratios: Mapping[str, float],
                             scores: Mapping[str, torch.Tensor] | None = None
                             ) -> dict[str, torch.Tensor]:
        """Remove ``ratios[space]`` (prune ratio) of every space's units
        (0 if missing)."""
        return self.sampler.nonuniform(ratios, scores)

    def sample_subnet_diff(self, ratio: float,
                           scores: Mapping[str, torch.Tensor] | None = None
                           ) -> dict[str, torch.Tensor]:
        """One global threshold over scores normalised per space.

        Each space's scores are divided by their maximum, the lowest
        ``ratio`` (prune ratio) of all units are removed, then per-space
        minimum and divisor constraints are applied.
        """
        return self.sampler.global_threshold(ratio, scores)

    def sample_subnet_for_flops(self, flops_ratio: float,
                                scores: Mapping[str, torch.Tensor] | None = None,
                                mode: str = 'uniform', tol: float = 0.01,
                                verify: bool = True
                                ) -> dict[str, torch.Tensor]:
        """Bisect the prune ratio until pruned / original MACs hits
        ``flops_ratio`` (a keep ratio of MACs: 0.5 = 2x fewer MACs) within
        ``tol`` (relative).

        Args:
            flops_ratio: Target MACs keep ratio in (0, 1].
            scores: Space scores.
            mode: ``'uniform'`` (same prune ratio per space) or ``'global'``
                (one threshold, :meth:`sample_subnet_diff`).
            tol: Relative tolerance on the MACs keep ratio.
            verify: Export once and measure the MACs of the sliced model
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
        total = self.original_flops
        if total <= 0:
            raise ValueError(f'sample_subnet_for_flops: model '
                             f'{type(self.model).__name__} has no MACs to '
                             'reduce')
        best, best_err = self.sampler.for_macs(
            flops_ratio, scores, self.estimate_flops, total, mode, tol)
        achieved = self.estimate_flops(best)
        report = {'target_ratio': flops_ratio, 'mode': mode,
                  'estimated_ratio': achieved / total,
                  'original_flops': total, 'estimated_flops': achieved}
        if verify:
            measured = self._exported_macs(best)
            report['exported_flops'] = measured
            report['exported_ratio'] = measured / total
        self.last_flops_report = report
        if best_err > tol:
            print_log(f'sample_subnet_for_flops: closest MACs keep ratio '
                      f'{achieved / total:.4f} for target {flops_ratio}',
                      logger='current', level=30)
        return best

    # -- latency (measured per-layer table, see :mod:`.latency_target`) --------
    def latency_model(self, **options) -> LatencyModel:
        """This pruner's per-layer latency table and estimator (built on
        first use, loaded from its cache when it exists); ``options``:
        ``batch=64``, ``grid=8``, ``repeats``, ``cache_dir``,
        ``num_threads``, ``progress``."""
        return latency_model_of(self, **options)

    def estimate_latency(self, subnet: Mapping[str, torch.Tensor] | None
                         = None, **options) -> float:
        """Estimated seconds per batch of the model exported for ``subnet``
        (``None``: the current masks), from :meth:`latency_model`."""
        return self.latency_model(**options).estimate(subnet)

    def sample_subnet_for_latency(self, ratio: float | None = None,
                                  scores: Mapping[str, torch.Tensor] | None
                                  = None, mode: str = 'efficient',
                                  ms: float | None = None, tol: float = 0.01,
                                  **options) -> dict[str, torch.Tensor]:
        """Like :meth:`sample_subnet_for_flops` on latency: keep ``ratio``
        of the dense latency or reach ``ms`` milliseconds per batch
        (:func:`~.latency_sampling.sample_subnet_for_latency`). ``mode``:
        ``'efficient'`` (cut where the most table latency is saved per MAC
        lost, no space below ``min_keep``), ``'uniform'`` or ``'global'``.
        ``options`` also take ``calibrate`` (export and time the subnet
        against the dense model, correcting the target: default True),
        ``calib_iters``, ``calib_repeats``, ``calib_tol`` and
        ``min_keep``. The report is stored in ``last_latency_report``."""
        subnet, self.last_latency_report = sample_subnet_for_latency(
            self, ratio, scores, mode, ms, tol, **options)
        return subnet

    def _exported_macs(self, subnet) -> int:
        """MACs of the model exported for ``subnet`` (masks restored)."""
        was = self.subnet
        self.set_subnet(subnet)
        small = self.export(check=False)
        if was is None:
            self.clear_subnet()
        else:
            self.set_subnet(was)
        return get_model_complexity(traceable_view(small),
                                    self.example_inputs,
                                    leaf_modules=self.leaf_modules)['macs']

    # -- complexity (MACs, called flops in the seed API) ---------------------
    def _ensure_cost(self) -> SubnetCost:
        if self._cost is None:
            self._cost = SubnetCost(traceable_view(self.model), self.graph,
                                    self.example_inputs, self.leaf_modules)
        return self._cost

    def estimate_flops(self, subnet: Mapping[str, torch.Tensor] | None = None
                       ) -> int:
        """MACs of the exported model for ``subnet`` (``None``: the current
        masks), without exporting; exact for every layer kind, other ops
        are not affected by pruning."""
        return self._ensure_cost().macs(self.graph.global_mask(subnet))

    def estimate_params(self, subnet: Mapping[str, torch.Tensor] | None = None
                        ) -> int:
        """Parameters of the exported model for ``subnet``, without exporting.

        Weights scale with the kept fraction of their output and input
        channels (output only for grouped convs and norm layers); biases,
        norm affine parameters and free parameters (layer scale) with the
        output fraction.
        """
        return self._ensure_cost().params(self.graph.global_mask(subnet))

    @property
    def original_flops(self) -> int:
        """MACs of the dense model."""
        return self._ensure_cost().total_macs

    # -- masked mode --------------------------------------------------------
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
                m = self._indices_to_mask(name, m, space.num_channels)
            m = m.reshape(-1).cpu()
            if m.numel() != space.num_channels:
                raise ValueError(f'mask of space {name!r} has {m.numel()} '
                                 f'entries, expected {space.num_channels}')
            if not bool(m.any()):
                raise ValueError(f'mask of space {name!r} removes every '
                                 'channel')
            res[name] = m.clone()
        return res

    @staticmethod
    def _indices_to_mask(name: str, idx: torch.Tensor, n: int
                         ) -> torch.Tensor:
        if idx.is_floating_point() or idx.is_complex():
            raise ValueError(f'subnet of space {name!r}: expected a bool '
                             f'keep mask or integer indices, got {idx.dtype}')
        idx = idx.long().reshape(-1)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise ValueError(f'subnet of space {name!r}: kept indices must '
                             f'be in [0, {n}), got {idx.tolist()[:8]}')
        mask = torch.zeros(n, dtype=torch.bool)
        mask[idx] = True
        return mask

    def set_subnet(self, subnet: Mapping[str, Any]) -> None:
        """Put the model into masked mode.

        Args:
            subnet: ``{space name: bool keep mask}`` (or kept indices);
                missing spaces keep everything.
        """
        subnet = self._normalise_subnet(subnet)
        gmask = self.graph.global_mask(subnet)
        # global_mask keeps one unit of a concat input the subnet emptied
        # (a conv with no output cannot run): the subnet shows it too, so
        # its counts agree with the masked and exported model
        start = 0
        for name, space in self.graph.spaces.items():
            end = start + space.num_channels
            if name in subnet and not torch.equal(gmask[start:end],
                                                  subnet[name]):
                subnet[name] = gmask[start:end].clone()
                print_log(f'set_subnet: space {name!r} emptied a concat '
                          'input; its first channel is kept', 'current',
                          logging.WARNING)
            start = end
        for name, m in subnet.items():
            self.channel_spaces[name].out_mask = m
        self.subnet = subnet
        apply_masks(self.model, self.graph, gmask)

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
        f64 = f", float64 relative {report['float64_rel_diff']:.3g}" \
            if 'float64_rel_diff' in report else ''
        print_log(f"export: max abs diff {report['max_abs_diff']:.3g} "
                  f"(relative {report['rel_diff']:.3g}{f64}) vs masked model",
                  logger='current')
        if report['vacuous']:
            print_log('export: the masked model outputs only zeros on the '
                      'check inputs (a zero-initialised head?), so this '
                      'comparison cannot detect a wrongly sliced layer',
                      logger='current', level=logging.WARNING)
        if not report['ok']:
            raise ExportError(
                f"exported model differs from the masked model: max abs "
                f"diff {report['max_abs_diff']:.4g}, relative "
                f"{report['rel_diff']:.4g}{f64} > {rtol}")
        return small

    def reconstruct(self, batches: Iterable, method: str = 'least_squares',
                    num_batches: int = 20, **kwargs) -> dict[str, Any]:
        """Refit the consumers of pruned channels on calibration batches so
        that their outputs match the dense model's, then re-estimate BN.

        Call after :meth:`set_subnet` and before fine-tuning; the masked
        model is updated in place (its parameters, so ``state_dict()``,
        checkpoints and :meth:`export` carry the refitted weights).
        Memory: the ``num_batches`` calibration inputs, one copy of the
        model (the target), one float64 Gram matrix ``X^T X`` (plus
        ``X^T Y``) per consumer and conv group, and the live activations at
        the current point of the graph of all calibration batches; when
        those exceed ``max_cache_mb`` each consumer re-runs the forward
        prefix batch by batch instead (same result, slower).

        Args:
            batches: Input tensors, ``(inputs, labels)`` pairs or mmengine
                data dicts.
            method: ``'least_squares'`` or ``'bias_compensation'``.
            num_batches: Calibration batches to use.
            **kwargs: ``ridge``, ``bn_recalib``, ``points_per_image``,
                ``layers``, ``seed``, ``max_cache_mb``, ``reference`` of
                :func:`~mmrazor_ext.pruners.reconstruction.reconstruct`.

        Returns:
            The report of :func:`~mmrazor_ext.pruners.reconstruction.reconstruct`.
        """
        return reconstruct(self, batches, method=method,
                           num_batches=num_batches, **kwargs)

    # -- persistence ----------------------------------------------------------
    def save_subnet(self, path: str, weights: bool = True) -> str:
        """Save the structure (JSON: space -> kept indices, see
        :mod:`.subnet_io`) and, optionally, the exported weights
        (``<path without .json>.pth``), each file written atomically.

        Returns:
            ``path``.
        """
        subnet = self.subnet or self._normalise_subnet({})
        data = subnet_io.subnet_record(subnet, self.channel_spaces,
                                       self.example_inputs,
                                       self.ignore_layers)
        state = self.export().state_dict() if weights else None
        return subnet_io.write_subnet(path, data, state)


def load_subnet(model: nn.Module, path: str,
                example_inputs: Sequence[torch.Tensor] | None = None,
                leaf_modules: Iterable[type | str] = (),
                load_weights: bool = True,
                weights: str | None = None) -> nn.Module:
    """Rebuild a pruned model from its original definition.

    Args:
        model: A freshly built model of the original (unpruned) definition.
        path: JSON written by :meth:`ChannelPruner.save_subnet`.
        example_inputs: Override the stored example input shapes.
        leaf_modules: Leaf modules used when the subnet was saved.
        load_weights: Load the saved sliced weights if present.
        weights: Weights file to load instead of the one the JSON names
            (which must lie in the JSON's folder); any location.

    Returns:
        The physically pruned model.

    Raises:
        SubnetFileError: The file is malformed or does not fit ``model``
            (the message names the file and the field).
    """
    data = subnet_io.read_subnet(path)
    wpath = subnet_io.weights_path(data, path, weights) if load_weights \
        else None
    if example_inputs is None:
        example_inputs = subnet_io.example_inputs_of(data, path)
    pruner = ChannelPruner(model, example_inputs,
                           ignore_layers=data.get('ignore_layers', ()),
                           leaf_modules=leaf_modules)
    pruner.set_subnet(subnet_io.kept_masks(data, pruner.channel_spaces,
                                           path))
    small = pruner.export()
    pruner.clear_subnet()
    if wpath is not None:
        subnet_io.load_weights(small, wpath)
    return small
