"""Export a (pruned / layer-pruned) model to ONNX, BN folded, and check it.

The model is the config's architecture, optionally rebuilt from an
algorithm's ``subnet.json`` (LayerFusion or channel pruning; the
``pruned_model.pth`` next to it is loaded) or given a checkpoint. Conv /
linear + BN pairs are folded (``--no-fuse-bn`` keeps them), the tensor path
(logits) is exported with a dynamic batch axis by torch's TorchScript-based
exporter (``dynamo=False``: no onnxscript needed), and, when onnxruntime is
installed (``pip install -e .[deploy]``), its outputs are compared with
PyTorch's on random inputs. A JSON summary is written next to the ONNX file.

Example:
    python tools/deploy/export_onnx.py \\
        configs/baselines/resnet56_1xb128_fashionmnist.py \\
        --subnet work_dirs/fusion_resnet56_1xb128_fashionmnist/subnet.json \\
        --out work_dirs/fusion_resnet56_1xb128_fashionmnist/model.onnx
"""
import argparse
import json
import os
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
    from mmrazor_ext.graph import TensorPath
    wrapper = TensorPath(model).eval()
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    x = torch.randn(2, *example.shape[1:])
    with torch.no_grad():
        torch.onnx.export(
            wrapper, (x,), args.out, dynamo=False, opset_version=args.opset,
            input_names=['input'], output_names=['logits'],
            dynamic_axes={'input': {0: 'batch'}, 'logits': {0: 'batch'}})
    summary = {'onnx': args.out, 'input_shape': list(example.shape[1:]),
               'bn_folded': not args.no_fuse_bn, 'opset': args.opset,
               'checked': False}
    try:
        import onnx
        onnx.checker.check_model(onnx.load(args.out))
        import onnxruntime as ort
    except ImportError:
        print('onnx / onnxruntime not installed (pip install -e .[deploy]): '
              'wrote the file without a check')
    else:
        sess = ort.InferenceSession(args.out,
                                    providers=['CPUExecutionProvider'])
        x = torch.randn(3, *example.shape[1:])  # another batch size
        with torch.no_grad():
            ref = wrapper(x).numpy()
        got = sess.run(None, {'input': x.numpy()})[0]
        diff = float(abs(ref - got).max())
        summary.update(checked=True, max_abs_diff=diff,
                       ok=diff <= args.atol)
        print(f'onnxruntime vs torch: max abs diff {diff:.3g}')
        if diff > args.atol:
            raise SystemExit(f'ONNX output differs by {diff} > {args.atol}')
    atomic_write_json(osp.splitext(args.out)[0] + '.json', summary, indent=2)
    print(f'wrote {args.out}')
    return summary


if __name__ == '__main__':
    main()
