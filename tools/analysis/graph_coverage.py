"""Pruning coverage over torchvision classification models (and ours).

For every model: build (weights=None) -> ChannelPruner -> uniform 50 % L1
prune (outputs, i.e. the classifier, are never pruned) -> export ->
equivalence check vs the masked model -> FLOPs of the exported model.

``--zoo timm`` runs one model per timm family instead (the smallest variant
of each timm model module, random init, no weights downloaded) and writes
``work_dirs/graph_coverage_timm/coverage.{json,md}``; every model ends as
``pruned`` (MACs ratio <= 0.75, exported == masked), a ``named error`` (the
graph's UnsupportedOpError / TraceError / ExportError, or
``PinnedChannelsError`` when the prunable channels cannot reach 0.75) or a
``silent no-op`` / ``crash`` / ``vacuous check`` (bugs: must be 0). Every
parameter gets small Gaussian noise before pruning, so that zero-initialised
heads do not turn the exported-vs-masked check into a comparison of zeros.

Example::

    python tools/analysis/graph_coverage.py --out work_dirs/coverage.json
    python tools/analysis/graph_coverage.py --models resnet18 cifar_resnet20
    python tools/analysis/graph_coverage.py --zoo timm
    python tools/analysis/graph_coverage.py --zoo timm --models regnetx_002
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import re
import signal
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


# --------------------------------------------------------------------------
# timm zoo
# --------------------------------------------------------------------------
TIMM_SIZE = 64
TIMM_PASS = 0.75  # a family counts as pruned at or below this MACs ratio
TIMM_MAX_PARAMS = 150e6  # smallest variant above this: skipped (CPU time)
TIMM_OUT = 'work_dirs/graph_coverage_timm'
_NAMED = ('UnsupportedOpError', 'TraceError', 'ExportError',
          'PinnedChannelsError')


def _meta_params(name: str) -> int | None:
    """Parameter count of timm model ``name`` (built on the meta device)."""
    import timm
    try:
        with torch.device('meta'):
            m = timm.create_model(name, pretrained=False)
        return sum(p.numel() for p in m.parameters())
    except Exception:  # some constructors need real tensors: not a pick
        return None


# size words in timm model names, smallest first (a name's rank: its
# smallest word; unknown words rank as a medium model)
_SIZE_WORDS = ['atto', 'femto', 'pico', 'nano', 'xxs', 'xxsmall', 'tiny',
               'xs', 'xsmall', 'mini', 't0', 'b0', 'lite', 'small', 's']
_LARGE_WORDS = ['base', 'b', 'medium', 'm', 'large', 'l', 'xl', 'huge',
                'giant', 'gigantic']


def size_key(name: str):
    """Sort key putting a timm family's small variants first."""
    words = re.split(r'[_.-]', name)
    rank = min([_SIZE_WORDS.index(w) for w in words if w in _SIZE_WORDS] +
               [len(_SIZE_WORDS) + 1 + _LARGE_WORDS.index(w)
                for w in words if w in _LARGE_WORDS] +
               [len(_SIZE_WORDS)])
    num = re.search(r'\d+', name)
    return rank, int(num.group()) if num else 0, len(name), name


def timm_families(cache: str | None = None, candidates: int = 4
                  ) -> list[dict]:
    """One model per timm model module (a family): of the ``candidates``
    names that look smallest (size words, depth numbers), the one with the
    fewest parameters (built on the meta device).
    ``[{'family', 'model', 'params'}]``, cached as JSON in ``cache``."""
    import timm
    if cache and os.path.exists(cache):
        with open(cache) as f:
            data = json.load(f)
        if data.get('timm') == timm.__version__:
            return data['families']
    fams = []
    for mod in timm.list_modules():
        best = None
        names = sorted(timm.list_models(module=mod), key=size_key)
        for name in names[:candidates]:
            n = _meta_params(name)
            if n is not None and (best is None or n < best[1]):
                best = (name, n)
        if best is not None:
            fams.append({'family': mod, 'model': best[0], 'params': best[1]})
    if cache:
        _dump(cache, {'timm': timm.__version__, 'families': fams})
    return fams


def timm_family_of(name: str) -> str:
    """The timm model module (family) defining ``name`` ('' if none)."""
    import timm
    return next((mod for mod in timm.list_modules()
                 if name in timm.list_models(module=mod)), '')


def build_timm(name: str, size: int = TIMM_SIZE):
    """(model, example input): a small input where the model takes one
    (``img_size`` for fixed-size ViTs), else its native input size."""
    import timm

    def create(**kw):
        torch.manual_seed(0)
        return timm.create_model(name, pretrained=False, num_classes=1000,
                                 **kw).eval()
    model = create()
    native = tuple(model.pretrained_cfg.get('input_size', (3, 224, 224)))
    tries = [(size, {})]
    if model.pretrained_cfg.get('fixed_input_size'):
        tries = [(size, {'img_size': size})]
    for sz, kw in tries:
        try:
            m = create(**kw) if kw else model
            x = torch.randn(1, native[0], sz, sz)
            with torch.no_grad():
                m(x)
            return m, x
        except Exception:  # too small for this architecture
            continue
    return model, torch.randn(1, *native)


def outcome_of(row: dict) -> str:
    """``pruned`` / ``named error`` / ``silent no-op`` / ``crash`` /
    ``timeout`` (``weak`` for a finished prune above :data:`TIMM_PASS` of a
    torchvision row, which is not checked against it)."""
    if row.get('error'):
        if 'TimeoutError: over' in row['error']:  # also wrapped by a tracer
            return 'timeout'
        return 'named error' if row['error'].split(':')[0] in _NAMED \
            else 'crash'
    if row['status'] != 'ok' or row['flops_ratio'] is None:
        return 'silent no-op'
    if row.get('vacuous'):
        return 'vacuous check'  # output all zeros: nothing was compared
    return 'pruned' if row['flops_ratio'] <= TIMM_PASS else 'weak'


def write_markdown(path: str, rows: list[dict]) -> None:
    """The coverage table as markdown (atomic write)."""
    lines = ['| family | model | status | MACs ratio | max abs diff | '
             'error |', '|---|---|---|---|---|---|']
    for r in rows:
        fr = '' if r['flops_ratio'] is None else f"{r['flops_ratio']:.3f}"
        md = '' if r['max_abs_diff'] is None else \
            f"{r['max_abs_diff']:.1e}"
        err = r['error'].replace('|', '/')[:160]
        lines.append(f"| {r.get('family', '')} | {r['model']} | "
                     f"{r['outcome']} | {fr} | {md} | {err} |")
    counts = summary(rows)
    lines += ['', ', '.join(f'{k}: {v}' for k, v in counts.items())]
    tmp = path + '.part'
    with open(tmp, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    os.replace(tmp, path)


def summary(rows: list[dict]) -> dict:
    """Counts: tried and per outcome."""
    out = {'tried': len(rows)}
    for r in rows:
        out[r['outcome']] = out.get(r['outcome'], 0) + 1
    return out


class _Alarm:
    """SIGALRM-based time limit of one model (0: none; Unix only)."""

    def __init__(self, seconds: int):
        self.seconds = seconds if hasattr(signal, 'SIGALRM') else 0

    def __enter__(self):
        if self.seconds:
            def fire(*_):
                raise TimeoutError(f'over {self.seconds} s')
            self.old = signal.signal(signal.SIGALRM, fire)
            signal.alarm(self.seconds)

    def __exit__(self, *exc):
        if self.seconds:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, self.old)


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


def check_model(name: str, ratio: float = 0.5, zoo: str = 'torchvision',
                timeout: int = 0) -> dict:
    """Run the coverage pipeline on one model; never raises.

    With ``zoo='timm'`` a pruner without prunable space, or a MACs ratio
    above :data:`TIMM_PASS`, is the pruner's ``PinnedChannelsError`` (named
    with the top pinning reasons) instead of a finished row.
    """
    from mmrazor_ext.estimators import get_model_complexity
    from mmrazor_ext.pruners import ChannelPruner, check_prunable
    from mmrazor_ext.utils import perturb_parameters
    row = {'model': name, 'status': 'error', 'build_s': None,
           'flops_ratio': None, 'spaces': None, 'max_abs_diff': None,
           'error': ''}
    try:
        with _Alarm(timeout):
            torch.manual_seed(0)
            model, x = build_timm(name) if zoo == 'timm' else build(name)
            row['input'] = list(x.shape)
            model.eval()
            _randomise_norms(model)
            # every parameter off its init: zero-initialised heads (Hiera,
            # MLP-Mixer, Sequencer, torchvision's ViT) make the output zero
            # whatever the slices, and the check would compare nothing
            perturb_parameters(model)
            t0 = time.perf_counter()
            pruner = ChannelPruner(model, x)
            row['build_s'] = round(time.perf_counter() - t0, 4)
            row['spaces'] = len(pruner.channel_spaces)
            if zoo == 'timm':
                check_prunable(pruner)
            if not pruner.channel_spaces:
                row['status'] = 'no prunable channels'
                return row
            scores = pruner.get_metric_local('l1')
            pruner.set_subnet(pruner.sample_subnet_uniform(ratio, scores))
            small = pruner.export()
            row['max_abs_diff'] = pruner.last_export_report['max_abs_diff']
            row['vacuous'] = pruner.last_export_report['vacuous']
            f0 = get_model_complexity(model, x)['flops']
            f1 = get_model_complexity(small, x)['flops']
            row['flops_ratio'] = round(f1 / f0, 4)
            row['status'] = 'ok' if f1 < f0 else 'not smaller'
            if zoo == 'timm':
                check_prunable(pruner, achieved=f1 / f0, target=TIMM_PASS,
                               slack=0.0)
    except Exception as e:  # report, do not stop the sweep
        row['error'] = f'{type(e).__name__}: {e}'.splitlines()[0][:400]
        row['traceback'] = traceback.format_exc(limit=3)[-1500:]
    finally:
        gc.collect()
        row['outcome'] = outcome_of(row)
    return row


def main_timm(args) -> int:
    """``--zoo timm``: one model per family (or ``--models``)."""
    out_dir = args.out_dir or TIMM_OUT
    os.makedirs(out_dir, exist_ok=True)
    if args.models:
        fams = [{'family': timm_family_of(m), 'model': m, 'params': None}
                for m in args.models]
    else:
        fams = timm_families(os.path.join(out_dir, 'families.json'))
    if args.skip_until:
        fams = fams[[f['model'] for f in fams].index(args.skip_until):]
    if args.limit:
        fams = fams[:args.limit]
    json_path = os.path.join(out_dir, 'coverage.json')
    rows = []
    print(f"{'family':22s} {'model':34s} {'outcome':13s} {'MACs':>6s}  "
          'error')
    for fam in fams:
        if fam['params'] and fam['params'] > TIMM_MAX_PARAMS:
            continue  # CPU sweep: the smallest variant is still huge
        row = check_model(fam['model'], args.ratio, zoo='timm',
                          timeout=args.timeout)
        row['family'] = fam['family']
        rows.append(row)
        fr = '' if row['flops_ratio'] is None else \
            f"{row['flops_ratio']:.3f}"
        print(f"{fam['family']:22s} {fam['model']:34s} {row['outcome']:13s}"
              f" {fr:>6s}  {row['error'][:120]}", flush=True)
        _dump(json_path, rows)
        write_markdown(os.path.join(out_dir, 'coverage.md'), rows)
    print(summary(rows))
    bad = [r for r in rows
           if r['outcome'] in ('silent no-op', 'crash', 'vacuous check')]
    return 1 if bad else 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--models', nargs='*', help='model names (default: '
                        'all torchvision classification models + ours)')
    parser.add_argument('--ratio', type=float, default=0.5)
    parser.add_argument('--out', help='write the rows as JSON here')
    parser.add_argument('--skip-until', help='start the default list at '
                        'this model (resume a long sweep)')
    parser.add_argument('--zoo', choices=('torchvision', 'timm'),
                        default='torchvision', help='timm: one model per '
                        'timm family (see the module doc)')
    parser.add_argument('--out-dir', help=f'--zoo timm: output folder '
                        f'(default {TIMM_OUT})')
    parser.add_argument('--limit', type=int, help='--zoo timm: first N '
                        'families only')
    parser.add_argument('--timeout', type=int, default=0, help='seconds '
                        'per model (0: none)')
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.zoo == 'timm':
        return main_timm(args)
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
