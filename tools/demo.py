"""The main job: train, CDP-prune and fine-tune ResNet-20 on Fashion-MNIST.

1. trains the dense baseline for a bounded budget through the mmengine
   Runner (progress in the log);
2. CDP one-shot prunes it to ``--flops-ratio`` of its FLOPs (BN statistics
   recalibrated), fine-tunes, and exports the physically smaller model;
3. rebuilds the pruned model from ``subnet.json`` and prints one table:
   MACs, params, CPU latency and test top-1 of dense vs pruned, plus the
   paths of the CDP score plots of the baseline (``cdp_vis/``).

Numbers go to ``work_dirs/demo/results.json``; finished stages are reused
unless ``--retrain`` is given. The terminal shows progress bars and the
results; each stage's full Runner log (environment, config, hooks, every
logging interval, warnings) is in ``<stage work dir>/console.log``
(``--verbose`` prints it instead).

Usage:
    python tools/demo.py [--epochs 1] [--finetune-epochs 1] [--retrain]
"""
import argparse
import json
import os.path as osp
import time

import torch
from mmengine.config import Config

from mmrazor_ext.engine.cli import quiet_console
from mmrazor_ext.engine.runner import build_runner
from mmrazor_ext.utils import atomic_write_json
from mmrazor_ext.utils.config import add_cfg_options_arg, parse_cfg_options

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(ROOT, 'configs/baselines/resnet20_1xb128_fashionmnist.py')
PRUNE_CONFIG = osp.join(ROOT,
                        'configs/pruning/cdp_resnet20_1xb128_fashionmnist.py')


def set_epochs(cfg: Config, epochs: int) -> Config:
    """Shorten a schedule: max_epochs and every epoch-based scheduler end."""
    cfg.train_cfg.max_epochs = epochs
    schedulers = cfg.param_scheduler
    for sched in schedulers if isinstance(schedulers, list) else [schedulers]:
        if sched.get('by_epoch', True):
            sched.end = epochs
    return cfg


def run_stage(cfg: Config, verbose: bool) -> None:
    """Train ``cfg`` with a progress bar; unless ``verbose``, the Runner's
    console output goes to ``<work_dir>/console.log``."""
    hooks = list(cfg.get('custom_hooks', []))
    if not any(h.get('type') == 'ProgressBarHook' for h in hooks):
        hooks.append(dict(type='ProgressBarHook',
                          desc=osp.basename(cfg.work_dir)))
    cfg.custom_hooks = hooks
    if verbose:
        build_runner(cfg).train()
        return
    log = osp.join(cfg.work_dir, 'console.log')
    with quiet_console(log) as quiet:
        build_runner(cfg).train()
    print(f'[demo]     full log: {log} ({quiet["warnings"]} Python '
          'warning(s) in it)', flush=True)


def fmt_top1(value) -> str:
    return 'n/a' if value is None else f'{value:.2f}'


def print_table(rows: list, header: list) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = '+'.join('-' * (w + 2) for w in widths)
    print(f'+{line}+')
    print('| ' + ' | '.join(str(h).ljust(w) for h, w in zip(header, widths))
          + ' |')
    print(f'+{line}+')
    for row in rows:
        print('| ' + ' | '.join(str(c).ljust(w) for c, w in zip(row, widths))
              + ' |')
    print(f'+{line}+')


def train_baseline(args) -> tuple[str, float]:
    """Stage 1: the dense ResNet-20 (reused when its checkpoint exists)."""
    cfg = set_epochs(Config.fromfile(CONFIG), args.epochs)
    cfg.merge_from_dict(parse_cfg_options(args.cfg_options))
    cfg.work_dir = osp.join(args.work_dir, 'baseline')
    cfg.launcher = 'none'
    ckpt = osp.join(cfg.work_dir, f'epoch_{args.epochs}.pth')
    if args.retrain or not osp.exists(ckpt):
        print(f'[demo] 1/2 training ResNet-20 on Fashion-MNIST for '
              f'{args.epochs} epoch(s) -> {cfg.work_dir}', flush=True)
        t0 = time.time()
        run_stage(cfg, args.verbose)
        return ckpt, time.time() - t0
    print(f'[demo] 1/2 reusing {ckpt} (pass --retrain to train again)')
    return ckpt, 0.0


def prune_finetune(args, baseline: str) -> tuple[dict, float]:
    """Stage 2: CDP one-shot pruning to the FLOPs target, fine-tune, export."""
    cfg = set_epochs(Config.fromfile(PRUNE_CONFIG), args.finetune_epochs)
    cfg.merge_from_dict(parse_cfg_options(args.cfg_options))
    cfg.model.init_checkpoint = baseline
    cfg.model.target.ratio = args.flops_ratio
    cfg.work_dir = osp.join(args.work_dir, 'cdp_pruned')
    cfg.launcher = 'none'
    report_path = osp.join(cfg.work_dir, 'report.json')
    if not args.retrain and osp.exists(report_path):
        print(f'[demo] 2/2 reusing {report_path}')
        with open(report_path) as f:
            return json.load(f), 0.0
    print(f'[demo] 2/2 CDP pruning to {args.flops_ratio:.0%} of the FLOPs, '
          f'fine-tuning {args.finetune_epochs} epoch(s) -> {cfg.work_dir}',
          flush=True)
    t0 = time.time()
    run_stage(cfg, args.verbose)
    with open(report_path) as f:
        return json.load(f), time.time() - t0


def latency_ms(baseline: str, report: dict) -> tuple[float, float]:
    """CPU latency (batch 64, median of 30) of the dense and pruned nets,
    the pruned one rebuilt from subnet.json + pruned_model.pth."""
    from mmrazor_ext.engine import safe_load
    from mmrazor_ext.estimators import measure_latency
    from mmrazor_ext.models import CifarResNet
    from mmrazor_ext.pruners import load_subnet
    x = torch.randn(64, 1, 28, 28)
    dense = CifarResNet(20, 10, 1)
    dense.load_state_dict(safe_load(baseline)['state_dict'])
    small = load_subnet(CifarResNet(20, 10, 1), report['subnet'],
                        example_inputs=(x[:1],), load_weights=False)
    small.load_state_dict(safe_load(report['pruned_model'])['state_dict'])
    return (1e3 * measure_latency(dense, x, warmup=5, repeats=30),
            1e3 * measure_latency(small, x, warmup=5, repeats=30))


def cdp_plots(args, baseline: str) -> dict:
    """CDP score heat-map and kept-ratio chart of the dense baseline (as
    tools/visualization/visualize_cdp.py draws them)."""
    from mmrazor_ext.apis.cdp_report import cdp_score_report
    from mmrazor_ext.apis.model_loading import build_from_config, build_loader
    cfg, model, example = build_from_config(
        CONFIG, baseline, parse_cfg_options(args.cfg_options))
    res = cdp_score_report(model, example, build_loader(cfg, 'train', 64),
                           osp.join(args.work_dir, 'cdp_vis'), batches=20,
                           flops_ratio=args.flops_ratio)
    return {k: res[k] for k in ('heatmap', 'kept_ratio', 'csv')}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--epochs', type=int, default=1,
                        help='baseline training epochs')
    parser.add_argument('--finetune-epochs', type=int, default=1)
    parser.add_argument('--flops-ratio', type=float, default=0.5,
                        help='FLOPs kept after pruning (0.5 = 2x fewer)')
    parser.add_argument('--work-dir', default=osp.join(ROOT, 'work_dirs/demo'))
    parser.add_argument('--retrain', action='store_true')
    parser.add_argument('--verbose', action='store_true',
                        help="print the Runners' full console log")
    add_cfg_options_arg(parser, help='KEY=VALUE overrides for both stages')
    args = parser.parse_args(argv)

    t0 = time.time()
    baseline, train_s = train_baseline(args)
    report, prune_s = prune_finetune(args, baseline)
    dense_ms, small_ms = latency_ms(baseline, report)
    plots = cdp_plots(args, baseline)
    flops_x = report['flops_before'] / report['flops_after']
    results = {
        'model': 'ResNet-20 (CIFAR layout, 1 input channel)',
        'dataset': 'Fashion-MNIST (60k train / 10k test)',
        'epochs': args.epochs,
        'finetune_epochs': args.finetune_epochs,
        'dense': {'flops': report['flops_before'],
                  'params': report['params_before'],
                  'latency_ms_b64': round(dense_ms, 2),
                  'top1': report['top1_before']},
        'pruned': {'flops': report['flops_after'],
                   'params': report['params_after'],
                   'latency_ms_b64': round(small_ms, 2),
                   'top1_right_after_pruning':
                       report.get('top1_step1_pruned'),
                   'top1_after_reconstruction':
                       report.get('top1_step1_reconstructed'),
                   'top1_after_bn_recalibration':
                       report.get('top1_step1_bn_recalibrated'),
                   'top1': report['top1_after']},
        'flops_reduction': round(flops_x, 3),
        'latency_speedup': round(dense_ms / small_ms, 3),
        'train_seconds': round(train_s, 1),
        'prune_finetune_seconds': round(prune_s, 1),
        'total_seconds': round(time.time() - t0, 1),
        'torch_threads': torch.get_num_threads(),
        'report': osp.join(args.work_dir, 'cdp_pruned', 'report.json'),
        'plots': plots,
    }
    atomic_write_json(osp.join(args.work_dir, 'results.json'), results,
                      indent=2)
    d, p = results['dense'], results['pruned']
    before_ft = p['top1_after_bn_recalibration']
    if before_ft is None:
        before_ft = p['top1_after_reconstruction']
    steps = ' + reconstruction' if p['top1_after_reconstruction'] is not None \
        else ''
    print()
    print_table(
        [['ResNet-20 dense', f"{d['flops'] / 1e6:.2f}",
          f"{d['params'] / 1e6:.3f}", f'{dense_ms:.1f}', f"{d['top1']:.2f}"],
         [f'CDP-pruned{steps} + BN, no gradient step',
          f"{p['flops'] / 1e6:.2f}", f"{p['params'] / 1e6:.3f}",
          f'{small_ms:.1f}', fmt_top1(before_ft)],
         ['CDP-pruned + fine-tuned', f"{p['flops'] / 1e6:.2f}",
          f"{p['params'] / 1e6:.3f}", f'{small_ms:.1f}', f"{p['top1']:.2f}"]],
        ['model', 'MACs (M)', 'params (M)', 'CPU ms (b64)', 'top-1 (%)'])
    # the reconstruction step only where the config ran one
    recon = '' if p['top1_after_reconstruction'] is None else \
        f"after reconstruction {fmt_top1(p['top1_after_reconstruction'])} %, "
    print(f"FLOPs reduction {flops_x:.2f}x, latency speed-up "
          f"{results['latency_speedup']:.2f}x; top-1 right after pruning "
          f"{fmt_top1(p['top1_right_after_pruning'])} %, {recon}"
          f"after BN recalibration "
          f"{fmt_top1(p['top1_after_bn_recalibration'])} %")
    print(f"results: {osp.join(args.work_dir, 'results.json')}; pruned "
          f"model: {report['pruned_model']}")
    print(f"CDP plots: {plots['heatmap']}, {plots['kept_ratio']} "
          f"(scores: {plots['csv']})")
    return results


if __name__ == '__main__':
    main()
