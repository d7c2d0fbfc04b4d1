"""Pruning coverage over torchvision classification models (and ours).

For every model: build (weights=None) -> ChannelPruner -> uniform 50 % L1
prune (outputs, i.e. the classifier, are never pruned) -> export ->
equivalence check vs the masked model -> FLOPs of the exported model.

Example::

    python tools/analysis/graph_coverage.py --out work_dirs/coverage.json
    python tools/analysis/graph_coverage.py --models resnet18 cifar_resnet20
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
import traceback

import torch

# inputs smaller than 224 keep the run short; these need another size
NATIVE_SIZE = {'vit_h_14': 56, 'maxvit_t': 224, 'inception_v3': 299}
# constructor arguments for a small input (ViTs have a fixed image size)
BUILD_KWARGS = {'vit_': lambda size: {'image_size': size}}
DEFAULT_SIZE = 64

MMPRETRAIN_BACKBONES = {
    'mmpretrain_resnet18': dict(type='mmpretrain.ResNet', depth=18),
    'mmpretrain_resnet50': dict(type='mmpretrain.ResNet', depth=50),
    'mmpretrain_resnext50': dict(type='mmpretrain.ResNeXt', depth=50,
                                 groups=32, width_per_group=4),
    'mmpretrain_mobilenet_v2': dict(type='mmpretrain.MobileNetV2',
                                    widen_factor=1.0),
    'mmpretrain_regnetx_400mf': dict(type='mmpretrain.RegNet',
                                     arch='regnetx_400mf'),
}
CIFAR_MODELS = [f'cifar_resnet{d}' for d in (20, 32, 44, 56, 110)]


def torchvision_models() -> list[str]:
    import torchvision
    return sorted(torchvision.models.list_models(module=torchvision.models))


def build(name: str):
    """Returns (model, example input)."""
    if name.startswith('cifar_resnet'):
        from mmrazor_ext.models import CifarResNet
        return CifarResNet(int(name[len('cifar_resnet'):])), \
            torch.randn(1, 3, 32, 32)
    if name.startswith('mmpretrain_') or name.startswith('imgcls_cifar'):
        from mmrazor_ext.registry import MODELS, register_all_modules
        register_all_modules()
        if name.startswith('imgcls_cifar'):
            backbone = dict(type='ResNet_CIFAR',
                            depth=int(name[len('imgcls_cifar'):]))
            size = 32
        else:
            backbone, size = MMPRETRAIN_BACKBONES[name], DEFAULT_SIZE
        model = MODELS.build(dict(
            type='mmpretrain.ImageClassifier', backbone=backbone,
            neck=dict(type='mmpretrain.GlobalAveragePooling'),
            head=dict(type='mmpretrain.LinearClsHead', num_classes=10,
                      in_channels=_feat_dim(backbone),
                      loss=dict(type='mmpretrain.CrossEntropyLoss'))))
        return model, torch.randn(1, 3, size, size)
    import torchvision
    size = next((s for k, s in NATIVE_SIZE.items() if name.startswith(k)),
                DEFAULT_SIZE)
    kwargs = next((f(size) for k, f in BUILD_KWARGS.items()
                   if name.startswith(k)), {})
    model = torchvision.models.get_model(name, weights=None, **kwargs)
    return model, torch.randn(1, 3, size, size)


def _feat_dim(backbone: dict) -> int:
    from mmrazor_ext.registry import MODELS
    m = MODELS.build(backbone)
    with torch.no_grad():
        out = m(torch.randn(1, 3, 64, 64))
    return out[-1].shape[1]


def _randomise_norms(model):
    # non-trivial BN statistics so that the equivalence check means something
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.affine:
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + .5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - .5)
                if m.running_mean is not None:
                    m.running_mean.copy_(
                        torch.rand(m.running_mean.shape, generator=g) - .5)
                    m.running_var.copy_(
                        torch.rand(m.running_var.shape, generator=g) + .5)


def check_model(name: str, ratio: float = 0.5) -> dict:
    """Run the coverage pipeline on one model; never raises."""
    from mmrazor_ext.estimators import get_model_complexity
    from mmrazor_ext.pruners import ChannelPruner
    row = {'model': name, 'status': 'error', 'build_s': None,
           'flops_ratio': None, 'spaces': None, 'max_abs_diff': None,
           'error': ''}
    try:
        torch.manual_seed(0)
        model, x = build(name)
        model.eval()
        _randomise_norms(model)
        t0 = time.perf_counter()
        pruner = ChannelPruner(model, x)
        row['build_s'] = round(time.perf_counter() - t0, 4)
        row['spaces'] = len(pruner.channel_spaces)
        if not pruner.channel_spaces:
            row['status'] = 'no prunable channels'
            return row
        scores = pruner.get_metric_local('l1')
        pruner.set_subnet(pruner.sample_subnet_uniform(ratio, scores))
        small = pruner.export()
        row['max_abs_diff'] = pruner.last_export_report['max_abs_diff']
        f0 = get_model_complexity(model, x)['flops']
        f1 = get_model_complexity(small, x)['flops']
        row['flops_ratio'] = round(f1 / f0, 4)
        row['status'] = 'ok' if f1 < f0 else 'not smaller'
    except Exception as e:  # report, do not stop the sweep
        row['error'] = f'{type(e).__name__}: {e}'.splitlines()[0][:300]
        row['traceback'] = traceback.format_exc(limit=3)[-1500:]
    finally:
        gc.collect()
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--models', nargs='*', help='model names (default: '
                        'all torchvision classification models + ours)')
    parser.add_argument('--ratio', type=float, default=0.5)
    parser.add_argument('--out', help='write the rows as JSON here')
    parser.add_argument('--skip-until', help='start the default list at '
                        'this model (resume a long sweep)')
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    names = args.models or (torchvision_models() + CIFAR_MODELS +
                            ['imgcls_cifar20', 'imgcls_cifar56'] +
                            list(MMPRETRAIN_BACKBONES))
    if args.skip_until:
        names = names[names.index(args.skip_until):]
    rows = []
    print(f"{'model':28s} {'status':22s} {'build s':>8s} {'FLOPs':>7s}  error")
    for name in names:
        row = check_model(name, args.ratio)
        rows.append(row)
        fr = '' if row['flops_ratio'] is None else f"{row['flops_ratio']:.3f}"
        bs = '' if row['build_s'] is None else f"{row['build_s']:.3f}"
        print(f"{name:28s} {row['status']:22s} {bs:>8s} {fr:>7s}  "
              f"{row['error']}", flush=True)
        if args.out:  # keep partial results of long sweeps
            _dump(args.out, rows)
    ok = [r for r in rows if r['status'] == 'ok']
    builds = [r['build_s'] for r in rows if r['build_s'] is not None]
    tv = set(torchvision_models())
    tv_ok = sum(1 for r in ok if r['model'] in tv)
    tv_total = sum(1 for r in rows if r['model'] in tv)
    print(f'\npassed {len(ok)}/{len(rows)} (torchvision {tv_ok}/{tv_total});'
          f' median graph build {statistics.median(builds):.3f} s'
          if builds else '')
    if args.out:
        _dump(args.out, rows)
    return 0 if len(ok) == len(rows) else 1


def _dump(path, rows):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + '.part'
    with open(tmp, 'w') as f:
        json.dump(rows, f, indent=1)
    os.replace(tmp, path)


if __name__ == '__main__':
    sys.exit(main())
