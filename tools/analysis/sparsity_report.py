"""Per-layer and global sparsity, 2:4 compliance and MACs of a checkpoint.

Reads any checkpoint with fake-sparse masks (SparsityHook / Runner
checkpoints, Amba stage checkpoints ``global_sparse_rate_*.pth.tar``,
``MCSparsity.save_sparse_model`` files) or a plain state_dict (zeros in the
weights count). Dense MACs per layer come from the checkpoint (Amba stage
checkpoints store them) or from ``--config`` (the model is built and counted
with the project's FLOPs counter); effective MACs = dense x density.

Example::

    python tools/analysis/sparsity_report.py \
        work_dirs/amba/sparse_ckpts/global_sparse_rate_70.pth.tar
    python tools/analysis/sparsity_report.py work_dirs/amba/iter_1000.pth \
        --config configs/sparsity/amba_resnet20_1xb128_fashionmnist.py \
        --input-shape 1 1 28 28 --json report.json
"""
import argparse
import sys

import torch

from mmrazor_ext.utils import atomic_write_json

MASK = '.weight_fake_sparse.mask'
STR_S = '.weight_fake_sparse.s'


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('checkpoint')
    p.add_argument('--config', help='mm config to count dense MACs with')
    p.add_argument('--input-shape', type=int, nargs='+',
                   help='input shape for MACs (default: the config\'s '
                   'default_input_shape, else 1 3 224 224)')
    p.add_argument('--json', help='also write the report as JSON')
    return p.parse_args(argv)


class ReportError(ValueError):
    """The input cannot be reported on; the message names the file."""


def load_state(path):
    """The state_dict and the whole checkpoint dict.

    Raises:
        ReportError: ``path`` is missing, not a checkpoint (a JSON subnet,
            text) or holds no tensors; the message names it.
    """
    from mmrazor_ext.engine import safe_load
    try:
        ckpt = safe_load(path, map_location='cpu')
    except FileNotFoundError:
        raise ReportError(f'{path}: no such checkpoint') from None
    except ValueError as err:  # not a torch file: JSON, text, ...
        raise ReportError(str(err)) from None
    state = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else ckpt
    if not isinstance(state, dict) or not any(
            isinstance(v, torch.Tensor) for v in state.values()):
        raise ReportError(f'{path}: holds no state_dict of tensors')
    return state, ckpt


def effective_weights(state):
    """``{layer: effective weight}`` for conv / linear weights in ``state``."""
    out = {}
    for key, w in state.items():
        if not key.endswith('.weight') or w.dim() not in (2, 3, 4, 5):
            continue
        name = key[:-len('.weight')]
        if not w.is_floating_point():
            continue
        mask = state.get(name + MASK)
        s = state.get(name + STR_S)
        if s is not None:  # STR: sign(W) * relu(|W| - sigmoid(s))
            w = torch.sign(w) * torch.relu(w.abs() - torch.sigmoid(s.float()))
        elif mask is not None:
            w = w * mask.to(w.dtype)
        out[name] = (w, mask is not None or s is not None)
    return out


def nm_groups_ok(w, n=2, m=4):
    """Fraction of input-channel groups of 4 with >= 2 zeros (None: n/a)."""
    if w.shape[1] % m:
        return None
    g = (w.movedim(1, -1) if w.dim() > 2 else w).reshape(-1, m)
    return float(((g == 0).sum(1) >= m - n).float().mean())


def dense_macs_from_config(cfg_path, shape):
    from mmengine.config import Config

    from mmrazor_ext.estimators import get_model_complexity
    from mmrazor_ext.registry import MODELS, register_all_modules
    register_all_modules()
    cfg = Config.fromfile(cfg_path)
    if shape is None:
        for hook in cfg.get('custom_hooks', []):
            kw = hook.get('sparsity_config', {}).get('scheduler', {}).get('kwargs', {})
            if kw.get('default_input_shape'):
                shape = list(kw['default_input_shape'])
        shape = shape or [1, 3, 224, 224]
    model = MODELS.build(cfg.model)
    res = get_model_complexity(model, torch.randn(*shape), per_layer=True)
    return res['flops'], {k: v['flops'] for k, v in res['layers'].items()}


def build_report(state, ckpt, total_macs=None, layer_macs=None):
    if layer_macs is None and isinstance(ckpt, dict):
        layer_macs = ckpt.get('layer_macs')
        total_macs = ckpt.get('total_macs')
    layers, zeros_s, total_s, zeros_all, total_all = [], 0, 0, 0, 0
    removed = 0
    for name, (w, sparse) in effective_weights(state).items():
        z = int((w == 0).sum())
        n = w.numel()
        zeros_all += z
        total_all += n
        if sparse:
            zeros_s += z
            total_s += n
        macs = (layer_macs or {}).get(name)
        eff = None if macs is None else int(round(macs * (1 - z / n)))
        if macs is not None:
            removed += macs - eff
        layers.append(dict(layer=name, shape=list(w.shape), params=n,
                           sparsity=z / n, fake_sparse=sparse,
                           nm_2to4=nm_groups_ok(w), dense_macs=macs,
                           effective_macs=eff))
    eligible = [r for r in layers if r['nm_2to4'] is not None]
    return dict(
        layers=layers,
        global_sparsity=zeros_s / total_s if total_s else None,
        all_layers_sparsity=zeros_all / total_all if total_all else None,
        sparse_layers=sum(r['fake_sparse'] for r in layers),
        compliant_2to4=sum(r['nm_2to4'] == 1.0 for r in eligible),
        checked_2to4=len(eligible),
        dense_macs=total_macs,
        effective_macs=None if total_macs is None else int(total_macs - removed))


def print_report(rep):
    head = (f'{"layer":<48} {"shape":<18} {"params":>9} {"sparsity":>9} '
            f'{"2:4":>6} {"dense MACs":>13} {"eff. MACs":>13}')
    print(head)
    print('-' * len(head))
    for r in rep['layers']:
        nm = '-' if r['nm_2to4'] is None else (
            'yes' if r['nm_2to4'] == 1.0 else f'{100 * r["nm_2to4"]:.0f}%')
        shape = 'x'.join(map(str, r['shape']))
        star = '' if r['fake_sparse'] else ' (dense)'
        print(f'{r["layer"] + star:<48} {shape:<18} {r["params"]:>9} '
              f'{100 * r["sparsity"]:>8.2f}% {nm:>6} '
              f'{r["dense_macs"] if r["dense_macs"] is not None else "-":>13} '
              f'{r["effective_macs"] if r["effective_macs"] is not None else "-":>13}')
    print('-' * len(head))
    g = rep['global_sparsity']
    print(f'global sparsity (fake-sparse layers, {rep["sparse_layers"]}): '
          + ('-' if g is None else f'{100 * g:.2f}%'))
    print(f'sparsity over all conv/linear weights: '
          f'{100 * rep["all_layers_sparsity"]:.2f}%')
    print(f'2:4 compliant layers: {rep["compliant_2to4"]}/{rep["checked_2to4"]} '
          '(layers with in_channels % 4 == 0)')
    if rep['dense_macs'] is not None:
        d, e = rep['dense_macs'], rep['effective_macs']
        print(f'MACs: dense {d:,}  effective {e:,}  ({d / max(e, 1):.2f}x fewer)')
    else:
        print('MACs: pass --config to count them')


def main(argv=None):
    args = parse_args(argv)
    try:
        state, ckpt = load_state(args.checkpoint)
    except ReportError as err:
        sys.exit(f'error: {err}')
    total = layer_macs = None
    if args.config:
        total, layer_macs = dense_macs_from_config(args.config, args.input_shape)
    rep = build_report(state, ckpt, total, layer_macs)
    print_report(rep)
    if args.json:
        atomic_write_json(args.json, rep)
    return rep


if __name__ == '__main__':
    main()
