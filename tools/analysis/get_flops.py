"""Print per-layer and total FLOPs (MACs) / params of a config's model.

Example::

    python tools/analysis/get_flops.py \
        configs/baselines/resnet20_1xb128_fashionmnist.py --shape 28 28
"""
from __future__ import annotations

import argparse
import sys

import torch

from mmrazor_ext.utils.config import add_cfg_options_arg, parse_cfg_options


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='mm config file')
    parser.add_argument('--shape', type=int, nargs='+', default=None,
                        help='input H W (or one size); default 32 for '
                        'CIFAR-style backbones, else 224')
    parser.add_argument('--in-channels', type=int, default=None,
                        help='input channels (default: from the config)')
    parser.add_argument('--no-layers', action='store_true',
                        help='print totals only')
    add_cfg_options_arg(parser)
    return parser.parse_args(argv)


def _human(n: float) -> str:
    for unit, div in (('G', 1e9), ('M', 1e6), ('K', 1e3)):
        if abs(n) >= div:
            return f'{n / div:.3f} {unit}'
    return f'{n:.0f}'


def build_model(cfg):
    from mmrazor_ext.registry import MODELS, register_all_modules
    register_all_modules()
    model = MODELS.build(cfg.model)
    model.eval()
    return model


def default_input(cfg, shape, in_channels):
    backbone = cfg.model.get('backbone', {}) or {}
    ch = in_channels or backbone.get('in_channels', 3)
    if shape is None:
        cifar = 'CIFAR' in str(backbone.get('type', ''))
        shape = [32, 32] if cifar else [224, 224]
    if len(shape) == 1:
        shape = shape * 2
    return torch.randn(1, ch, *shape)


def main(argv=None) -> int:
    args = parse_args(argv)
    from mmengine.config import Config
    cfg = Config.fromfile(args.config)
    cfg.merge_from_dict(parse_cfg_options(args.cfg_options))
    from mmrazor_ext.estimators import get_model_complexity
    model = build_model(cfg)
    x = default_input(cfg, args.shape, args.in_channels)
    res = get_model_complexity(model, x, per_layer=True)
    if not args.no_layers:
        width = max([len(n) for n in res['layers']] + [5])
        print(f"{'layer':{width}s}  {'type':18s} {'FLOPs':>12s} "
              f"{'params':>10s} {'%FLOPs':>7s}")
        for name, e in res['layers'].items():
            if not e['flops'] and not e['params']:
                continue
            pct = 100 * e['flops'] / max(res['flops'], 1)
            print(f"{name:{width}s}  {e['type'][:18]:18s} "
                  f"{e['flops']:>12,d} {e['params']:>10,d} {pct:6.2f}%")
        print()
    print(f'Input shape: {tuple(x.shape)}')
    print(f"FLOPs (MACs): {_human(res['flops'])} ({res['flops']:,d})")
    print(f"Params: {_human(res['params'])} ({res['params']:,d})")
    return 0


if __name__ == '__main__':
    sys.exit(main())
