"""The Deploy stage of a compression recipe and per-stage measurements.

:func:`deploy_model` turns the result of the previous stages (a pruned,
possibly sparse-training model carrying fake-sparse masks) into the model
that ships: masks baked into the weights and the fake-sparse nodes removed
(:func:`~mmrazor_ext.sparsity.strip_fake_sparse`), BatchNorm folded into the
preceding conv / linear (:func:`~mmrazor_ext.graph.fold_bn`), every layer's
sparsity pattern checked to survive the fold, and an ONNX file written
atomically and compared with PyTorch under onnxruntime (:func:`export_onnx`,
also the core of ``tools/deploy/export_onnx.py``).

Folding multiplies each output channel by ``gamma / sqrt(var + eps)``, so a
zero weight stays exactly zero and 2:4 groups along the input dimension stay
2:4; :func:`verify_patterns` checks this per layer rather than trusting it,
because a later change of the folding code (or a BN with a NaN statistic)
would otherwise ship a silently dense or broken model.

:func:`measure_stage` gives the numbers of one recipe row (MACs, params,
non-zero params, sparsity per pattern, CPU latency, top-1).
"""
from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from mmrazor_ext.estimators import get_model_complexity, measure_latency
from mmrazor_ext.graph import TensorPath, check_equivalence, find_conv_bn_pairs, fold_bn
from mmrazor_ext.sparsity import (
    block_aligned,
    is_sparse_layer,
    nm_compliant,
    nm_eligible,
    strip_fake_sparse,
)
from mmrazor_ext.sparsity.mask_generators import block_grid
from mmrazor_ext.utils import atomic_write, evaluate_top1, unwrap_model

__all__ = ['PRUNABLE', 'deploy_model', 'detect_pattern', 'export_onnx',
           'check_onnx', 'layer_patterns', 'measure_stage', 'verify_patterns']

#: Layers whose weights sparsity applies to (the sparsity package's set).
PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)

#: Knight's CustomPruner tile: 32 input channels x 64 output filters.
BLOCK_IN, BLOCK_OUT = 32, 64
BLOCK_NAME = f'block{BLOCK_IN}x{BLOCK_OUT}'


# --- sparsity patterns --------------------------------------------------------
@torch.no_grad()
def detect_pattern(weight: torch.Tensor, block_in: int = BLOCK_IN,
                   block_out: int = BLOCK_OUT) -> dict[str, Any]:
    """The sparsity pattern of one weight tensor.

    Args:
        weight: ``(out, in, *kernel)`` or ``(out, in)``.
        block_in: Input channels per Knight tile.
        block_out: Output filters per Knight tile.

    Returns:
        ``{'pattern', 'sparsity'}``: ``'dense'`` (no zero), ``'2:4'`` (every
        group of 4 consecutive input-channel weights has >= 2 zeros),
        ``'block32x64'`` (the zeros are exactly whole aligned tiles) or
        ``'unstructured'``; ``sparsity`` is the zero fraction.
    """
    w = weight.detach()
    zeros = int((w == 0).sum())
    level = zeros / max(w.numel(), 1)
    if zeros == 0:
        pattern = 'dense'
    elif w.dim() >= 2 and w.shape[1] % 4 == 0 and nm_compliant(w, 2, 4):
        pattern = '2:4'
    elif w.dim() >= 2 and math.prod(block_grid(w.shape, block_in,
                                               block_out)) > 0 \
            and block_aligned(w, block_in, block_out):
        pattern = f'block{block_in}x{block_out}'
    else:
        pattern = 'unstructured'
    return {'pattern': pattern, 'sparsity': level}


def _prunable_layers(model: nn.Module) -> Iterable[tuple[str, nn.Module]]:
    for name, m in unwrap_model(model).named_modules():
        if isinstance(m, PRUNABLE) and isinstance(
                getattr(m, 'weight', None), torch.Tensor):
            yield name, m


def layer_patterns(model: nn.Module) -> dict[str, dict[str, Any]]:
    """:func:`detect_pattern` of every conv / linear layer of ``model``.

    A sparse-training layer is read through its mask (``layer.weight`` is
    the masked weight), so the result is what deployment will see.

    Returns:
        ``{qualified layer name: {'pattern', 'sparsity', 'shape'}}``.
    """
    out = {}
    for name, m in _prunable_layers(model):
        info = detect_pattern(m.weight)
        info['shape'] = list(m.weight.shape)
        out[name] = info
    return out


@torch.no_grad()
def verify_patterns(before: Mapping[str, Mapping[str, Any]],
                    zero_masks: Mapping[str, torch.Tensor],
                    model: nn.Module) -> dict[str, dict[str, Any]]:
    """Check that every sparse layer kept its zeros and its pattern.

    Args:
        before: :func:`layer_patterns` of the model before the change.
        zero_masks: ``{layer: bool tensor}`` of the weights that were zero
            before (only sparse layers need an entry).
        model: The changed (e.g. BN-folded) model.

    Returns:
        :func:`layer_patterns` of ``model``.

    Raises:
        ValueError: A sparse layer is missing, changed shape, has a weight
            that was zero and is not any more, or no longer has its pattern
            (the message names the layer).
    """
    after = layer_patterns(model)
    layers = dict(_prunable_layers(model))
    for name, info in before.items():
        if info['pattern'] == 'dense':
            continue
        if name not in after:
            raise ValueError(f'deploy: sparse layer {name!r} '
                             f'({info["pattern"]}) is missing after folding')
        w = layers[name].weight
        zero = zero_masks[name]
        if tuple(w.shape) != tuple(zero.shape):
            raise ValueError(
                f'deploy: layer {name!r} changed shape {tuple(zero.shape)} '
                f'-> {tuple(w.shape)} while folding')
        lost = int((zero & (w != 0)).sum())
        if lost:
            raise ValueError(
                f'deploy: layer {name!r} lost its {info["pattern"]} pattern: '
                f'{lost} pruned weight(s) became non-zero')
        if info['pattern'] == '2:4' and not nm_compliant(w, 2, 4):
            raise ValueError(f'deploy: layer {name!r} is no longer 2:4 '
                             'along its input channels')
        # More zeros are fine (a BN with gamma = 0 zeroes a whole filter),
        # so a block layer may now read as 'unstructured': the tiles
        # themselves were checked above through the zero mask.
    return after


# --- ONNX ---------------------------------------------------------------------
def _single_input(example_inputs) -> torch.Tensor:
    if isinstance(example_inputs, torch.Tensor):
        return example_inputs
    if isinstance(example_inputs, (tuple, list)) and len(example_inputs) == 1 \
            and isinstance(example_inputs[0], torch.Tensor):
        return example_inputs[0]
    raise ValueError('example_inputs: ONNX export takes one input tensor, got '
                     f'{type(example_inputs).__name__}')


def check_onnx(path: str, model: nn.Module, inputs,
               rtol: float | None = None, atol: float | None = None
               ) -> dict[str, Any]:
    """Validate an ONNX file and compare onnxruntime with PyTorch.

    Args:
        path: The ONNX file (its single input is named ``input``).
        model: The PyTorch module that was exported (called on ``inputs``).
        inputs: One input tensor.
        rtol: Allowed max abs difference relative to the largest PyTorch
            output magnitude (None: not checked).
        atol: Allowed max abs difference (None: not checked).

    Returns:
        ``{'checked', 'ok', 'outputs', 'max_abs_diff', 'max_rel_diff'}``.

    Raises:
        ImportError: onnx / onnxruntime are not installed.
        ValueError: An output differs by more than ``rtol`` / ``atol``
            (the message names the output).
    """
    try:
        import onnx
        import onnxruntime as ort
    except ImportError as e:
        raise ImportError('checking an ONNX file needs onnx and onnxruntime '
                          '(pip install -e .[deploy])') from e
    onnx.checker.check_model(onnx.load(path))
    x = _single_input(inputs)
    sess = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ref = model(x)
    finally:
        model.train(was_training)
    refs = list(ref) if isinstance(ref, (tuple, list)) else [ref]
    names = [o.name for o in sess.get_outputs()]
    got = sess.run(None, {sess.get_inputs()[0].name: x.cpu().numpy()})
    if len(got) != len(refs):
        raise ValueError(f'ONNX file {path} has {len(got)} output(s), PyTorch '
                         f'{len(refs)}')
    max_abs = max_rel = 0.0
    for name, r, g in zip(names, refs, got):
        r = r.detach().float().cpu()
        g = torch.as_tensor(g).float()
        if tuple(r.shape) != tuple(g.shape):
            raise ValueError(f'ONNX output {name!r}: shape {tuple(g.shape)}, '
                             f'PyTorch {tuple(r.shape)}')
        diff = float((r - g).abs().max()) if r.numel() else 0.0
        rel = diff / max(float(r.abs().max()) if r.numel() else 0.0, 1e-12)
        if (rtol is not None and rel > rtol) or \
                (atol is not None and diff > atol):
            raise ValueError(
                f'ONNX output {name!r} differs from PyTorch: max abs diff '
                f'{diff:.3g}, relative {rel:.3g} (rtol {rtol}, atol {atol})')
        max_abs, max_rel = max(max_abs, diff), max(max_rel, rel)
    return {'checked': True, 'ok': True, 'outputs': names,
            'max_abs_diff': max_abs, 'max_rel_diff': max_rel}


def export_onnx(model: nn.Module, example_inputs, path: str, opset: int = 17,
                check: bool = True, check_inputs=None,
                rtol: float | None = None, atol: float | None = None
                ) -> dict[str, Any]:
    """Export ``model``'s tensor path (logits) to ONNX atomically.

    The file is written to a temp file in the destination folder, checked
    there (when ``check``) and only then renamed onto ``path``: a failed
    export or check leaves no file (or the previous one). The batch axis is
    dynamic; torch's TorchScript-based exporter is used (``dynamo=False``,
    no onnxscript needed).

    Args:
        model: Any model :class:`~mmrazor_ext.graph.TensorPath` can run
            (plain modules and mmengine models).
        example_inputs: One input tensor (or a 1-tuple) traced by the
            exporter.
        path: Destination ``.onnx`` path.
        opset: ONNX opset.
        check: Run :func:`check_onnx` on the temp file.
        check_inputs: Inputs of the check (default ``example_inputs``);
            another batch size also checks the dynamic axis.
        rtol: See :func:`check_onnx`.
        atol: See :func:`check_onnx`.

    Returns:
        ``{'onnx', 'opset', 'input_shape', 'checked'}`` plus the check's
        numbers when checked.
    """
    x = _single_input(example_inputs)
    wrapper = TensorPath(model)
    was_training = model.training
    wrapper.eval()
    summary: dict[str, Any] = {'onnx': path, 'opset': int(opset),
                               'input_shape': list(x.shape[1:]),
                               'checked': False}

    def write(tmp):
        with torch.no_grad():
            torch.onnx.export(
                wrapper, (x,), tmp, dynamo=False, opset_version=opset,
                input_names=['input'], output_names=['logits'],
                dynamic_axes={'input': {0: 'batch'}, 'logits': {0: 'batch'}})
        if check:
            summary.update(check_onnx(
                tmp, wrapper, x if check_inputs is None else check_inputs,
                rtol=rtol, atol=atol))

    try:
        atomic_write(path, write)
    finally:
        model.train(was_training)
    return summary


# --- deploy -------------------------------------------------------------------
def deploy_model(model: nn.Module, example_inputs, fuse_bn: bool = True,
                 onnx_path: str | None = None, check_onnx: bool = True,
                 rtol: float = 1e-4) -> tuple[nn.Module, dict[str, Any]]:
    """Make the deployable model: masks baked, BN folded, patterns checked,
    ONNX exported and compared.

    ``model`` itself is not changed (a deep copy is deployed), so a recipe
    can still measure or resume the sparse-training model.

    Args:
        model: The previous stage's model (plain, pruned, or carrying
            fake-sparse nodes; an mmengine model or a wrapped one).
        example_inputs: One input tensor (BN running statistics must be
            final: they are folded in eval semantics).
        fuse_bn: Fold every BN that directly follows a conv / linear.
        onnx_path: Write the ONNX file here (None: no export).
        check_onnx: Compare onnxruntime with PyTorch on ``example_inputs``
            (needs onnx and onnxruntime).
        rtol: Allowed ONNX vs PyTorch (and folded vs original) max abs
            difference relative to the output scale.

    Returns:
        ``(deployed model in eval mode, info)``; ``info`` has
        ``fused_pairs`` (``[conv, bn]`` names), ``remaining_bn`` (BNs that
        follow no conv / linear, kept), ``stripped_layers`` (fake-sparse
        layers baked), ``patterns_before`` / ``patterns_after`` (per layer
        ``{'pattern', 'sparsity', 'shape'}``), ``fold_rel_diff``, ``onnx``
        and ``max_abs_diff`` / ``max_rel_diff`` (ONNX vs PyTorch; None when
        not checked).

    Raises:
        ValueError: A layer lost its sparsity pattern (named), the folded
            model's output differs from the input model's by more than
            ``rtol``, or an ONNX output differs (named).
    """
    x = _single_input(example_inputs)
    source = unwrap_model(model)
    new = copy.deepcopy(source).eval()
    stripped = [n for n, m in new.named_modules() if is_sparse_layer(m)]
    # eval first: ProbMask's training forward samples a random mask, the
    # baked weights must use the hard one.
    strip_fake_sparse(new, bake=True)
    before = layer_patterns(new)
    zero_masks = {n: (m.weight == 0) for n, m in _prunable_layers(new)
                  if before[n]['pattern'] != 'dense'}
    pairs: list[tuple[str, str]] = []
    if fuse_bn:
        pairs = [tuple(p) for p in find_conv_bn_pairs(new, (x,))]
        new = fold_bn(new, (x,), inplace=True)
    new.eval()
    after = verify_patterns(before, zero_masks, new)
    eq = check_equivalence(source, new, (x,), rtol=rtol)
    if not eq['ok']:
        raise ValueError(
            f'deploy: the folded model differs from the input model by '
            f'{eq["rel_diff"]:.3g} relative (> rtol {rtol}); are the BN '
            'running statistics finite?')
    info: dict[str, Any] = {
        'fused_pairs': [list(p) for p in pairs],
        'remaining_bn': [n for n, m in new.named_modules()
                         if isinstance(m, nn.modules.batchnorm._BatchNorm)],
        'stripped_layers': stripped,
        'patterns_before': before, 'patterns_after': after,
        'fold_rel_diff': eq['rel_diff'],
        'onnx': None, 'max_abs_diff': None, 'max_rel_diff': None,
    }
    if onnx_path is not None:
        summary = export_onnx(new, x, onnx_path, check=check_onnx, rtol=rtol)
        info['onnx'] = onnx_path
        info['max_abs_diff'] = summary.get('max_abs_diff')
        info['max_rel_diff'] = summary.get('max_rel_diff')
    return new, info


# --- measurements -------------------------------------------------------------
def _sparsity_summary(model: nn.Module) -> dict[str, Any]:
    """Global sparsity over prunable weights and the share of each pattern."""
    pats = layer_patterns(model)
    zeros = total = 0
    eligible_24 = is_24 = tiled = is_block = 0
    unstr_zeros = unstr_total = 0
    counts: dict[str, int] = {}
    for name, m in _prunable_layers(model):
        w = m.weight.detach()
        p = pats[name]['pattern']
        counts[p] = counts.get(p, 0) + 1
        z = int((w == 0).sum())
        zeros += z
        total += w.numel()
        # The hardware rules decide which layers "could" be 2:4 / tiled.
        if w.dim() >= 2 and nm_eligible(w.shape, getattr(m, 'groups', 1)):
            eligible_24 += 1
            is_24 += p == '2:4'
        if w.dim() >= 2 and math.prod(block_grid(w.shape, BLOCK_IN,
                                                 BLOCK_OUT)) > 0:
            tiled += 1
            is_block += p == BLOCK_NAME
        if p == 'unstructured':
            unstr_zeros += z
            unstr_total += w.numel()
    return {
        'sparsity': zeros / max(total, 1),
        'sparsity_by_pattern': {
            '2:4': is_24 / eligible_24 if eligible_24 else 0.0,
            BLOCK_NAME: is_block / tiled if tiled else 0.0,
            'unstructured': unstr_zeros / max(unstr_total, 1),
        },
        'pattern_counts': counts,
    }


def measure_stage(model: nn.Module, example_inputs, test_loader=None,
                  latency_batch: int | None = 64, device: str = 'cpu',
                  repeats: int = 20, max_batches: int | None = None
                  ) -> dict[str, Any]:
    """The numbers of one recipe row, measured in this process.

    A sparse-training model is measured through a baked copy (the masks
    written into the weights, fake-sparse nodes removed), which computes
    the same outputs and is what deployment runs; ``model`` is unchanged.

    Args:
        model: Plain, pruned, sparse-training or deployed model.
        example_inputs: One input tensor (batch 1 is enough) for MACs.
        test_loader: Batches for top-1 (mmengine dicts or ``(x, y)``);
            None skips top-1.
        latency_batch: Batch size of the latency measurement (None or 0
            skips it).
        device: Only ``'cpu'``: latency targets are CPU latencies.
        repeats: Timed forward passes (the median is reported).
        max_batches: At most this many batches of ``test_loader``.

    Returns:
        ``{'macs', 'params', 'nonzero_params', 'sparsity',
        'sparsity_by_pattern', 'pattern_counts', 'latency_ms',
        'latency_batch', 'top1'}`` (``latency_ms`` / ``top1`` None when
        skipped).
    """
    if str(device) != 'cpu':
        raise ValueError(f'measure_stage: device {device!r} not supported; '
                         "latency is measured on 'cpu'")
    x = _single_input(example_inputs)
    net = copy.deepcopy(unwrap_model(model)).cpu().eval()
    strip_fake_sparse(net, bake=True)
    cx = get_model_complexity(net, (x.cpu(),))
    seen, nonzero = set(), 0
    for p in net.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            nonzero += int((p.detach() != 0).sum())
    row: dict[str, Any] = {'macs': int(cx['macs']), 'params': int(cx['params']),
                           'nonzero_params': nonzero}
    row.update(_sparsity_summary(net))
    row['latency_ms'] = None
    row['latency_batch'] = int(latency_batch) if latency_batch else None
    if latency_batch:
        xb = torch.randn(int(latency_batch), *x.shape[1:], dtype=x.dtype)
        row['latency_ms'] = 1000.0 * measure_latency(
            TensorPath(net).eval(), (xb,), warmup=max(1, min(5, repeats)),
            repeats=repeats)
    row['top1'] = None
    if test_loader is not None:
        row['top1'] = evaluate_top1(net, test_loader, max_batches=max_batches)
    return row
