"""Export a (pruned / layer-pruned) model to ONNX, BN folded, and check it.

The model is the config's architecture, optionally rebuilt from an
algorithm's ``subnet.json`` (LayerFusion or channel pruning; the
``pruned_model.pth`` next to it is loaded) or given a checkpoint. Conv /
linear + BN pairs are folded (``--no-fuse-bn`` keeps them), the tensor path
(logits) is exported with a dynamic batch axis by torch's TorchScript-based
exporter (``dynamo=False``: no onnxscript needed), and, when onnxruntime is
installed (``pip install -e .[deploy]``), its outputs are compared with
PyTorch's on random inputs (the file is written and checked atomically by
:func:`mmrazor_ext.algorithms.recipe_deploy.export_onnx`, which the recipe's
Deploy stage uses too). A JSON summary is written next to the ONNX file.

Example:
    python tools/deploy/export_onnx.py \\
        configs/baselines/resnet56_1xb128_fashionmnist.py \\
        --subnet work_dirs/fusion_resnet56_1xb128_fashionmnist/subnet.json \\
        --out work_dirs/fusion_resnet56_1xb128_fashionmnist/model.onnx
"""
import argparse
import importlib.util
import json
import os.path as osp

import torch

from mmrazor_ext.apis.model_loading import build_from_config
from mmrazor_ext.utils import atomic_write_json
from mmrazor_ext.utils.config import add_cfg_options_arg, parse_cfg_options


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='ONNX export (BN folded)')
    p.add_argument('config', help='config of the original architecture')
    p.add_argument('--checkpoint', help='weights of the (unpruned) config '
                   'model, or of the rebuilt model with --subnet')
    p.add_argument('--subnet', help="an algorithm's subnet.json")
    p.add_argument('--out', required=True, help='output .onnx path')
    p.add_argument('--no-fuse-bn', action='store_true')
    p.add_argument('--opset', type=int, default=17)
    p.add_argument('--atol', type=float, default=1e-4,
                   help='allowed max abs difference onnxruntime vs torch')
    add_cfg_options_arg(p)
    return p.parse_args(argv)


def build_model(args):
    """The model to export and its example input."""
    from mmrazor_ext.engine import safe_load
    ckpt = None if args.subnet else args.checkpoint
    _, model, example = build_from_config(args.config, ckpt,
                                          parse_cfg_options(args.cfg_options))
    folded = False
    if args.subnet:
        with open(args.subnet) as f:
            fmt = json.load(f).get('format')
        folder = osp.dirname(osp.abspath(args.subnet))
        weights = args.checkpoint or osp.join(folder, 'pruned_model.pth')
        if fmt in ('mmrazor_ext.fusion', 'mmrazor_ext.subnet'):  # any version
            from mmrazor_ext.algorithms import load_fused_model
            model = load_fused_model(model, args.subnet, load_weights=False)
            with open(args.subnet) as f:
                folded = bool(json.load(f).get('bn_folded'))
        else:
            from mmrazor_ext.pruners import load_subnet
            model = load_subnet(model, args.subnet, example_inputs=(example,),
                                load_weights=False)
        if osp.isfile(weights):
            state = safe_load(weights)
            model.load_state_dict(state.get('state_dict', state))
        else:
            print(f'warning: {weights} not found; exporting random weights')
    model.eval()
    if not args.no_fuse_bn and not folded:
        from mmrazor_ext.graph import fold_bn
        model = fold_bn(model, example)
    return model, example


def main(argv=None) -> dict:
    args = parse_args(argv)
    model, example = build_model(args)
    from mmrazor_ext.algorithms.recipe_deploy import export_onnx
    # onnxruntime is optional here (pip install -e .[deploy]): without it
    # the file is written unchecked, as before.
    checkable = all(importlib.util.find_spec(m) is not None
                    for m in ('onnx', 'onnxruntime'))
    if not checkable:
        print('onnx / onnxruntime not installed (pip install -e .[deploy]): '
              'writing the file without a check')
    x = torch.randn(2, *example.shape[1:])
    try:
        # Checked on another batch size (3) than exported (2): the batch
        # axis really is dynamic. A failed check leaves no file behind.
        summary = export_onnx(model, x, args.out, opset=args.opset,
                              check=checkable,
                              check_inputs=torch.randn(3, *example.shape[1:]),
                              atol=args.atol)
    except ValueError as e:
        raise SystemExit(str(e)) from e
    summary['bn_folded'] = not args.no_fuse_bn
    if summary['checked']:
        print(f'onnxruntime vs torch: max abs diff '
              f'{summary["max_abs_diff"]:.3g}')
    atomic_write_json(osp.splitext(args.out)[0] + '.json', summary, indent=2)
    print(f'wrote {args.out}')
    return summary


if __name__ == '__main__':
    main()
