"""The main job: train and evaluate ResNet-20 on real Fashion-MNIST.

Trains the baseline config for a bounded budget through the mmengine Runner
(progress in the log), evaluates on the 10k test images and prints a results
table; the numbers are also written to ``work_dirs/demo/results.json``.
A finished baseline checkpoint is reused unless ``--retrain`` is given.

Usage:
    python tools/demo.py [--epochs 1] [--work-dir work_dirs/demo] [--retrain]
"""
import argparse
import json
import os
import os.path as osp
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import torch  # noqa: E402
from mmengine.config import Config, DictAction  # noqa: E402

from tools.common import build_runner  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(ROOT, 'configs/baselines/resnet20_1xb128_fashionmnist.py')


def set_epochs(cfg: Config, epochs: int) -> Config:
    """Shorten a schedule: max_epochs and every epoch-based scheduler end."""
    cfg.train_cfg.max_epochs = epochs
    schedulers = cfg.param_scheduler
    for sched in schedulers if isinstance(schedulers, list) else [schedulers]:
        if sched.get('by_epoch', True):
            sched.end = epochs
    return cfg


def write_json(path: str, data: dict) -> None:
    """Write JSON atomically (temp file, then rename)."""
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


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


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--epochs', type=int, default=1)
    parser.add_argument('--work-dir', default=osp.join(ROOT, 'work_dirs/demo'))
    parser.add_argument('--retrain', action='store_true')
    parser.add_argument('--cfg-options', nargs='*', default=[],
                        help='key=value overrides for the baseline config')
    args = parser.parse_args(argv)

    cfg = Config.fromfile(CONFIG)
    set_epochs(cfg, args.epochs)
    for item in args.cfg_options:
        key, value = item.split('=', 1)
        cfg.merge_from_dict({key: DictAction._parse_iterable(value)})
    base_dir = osp.join(args.work_dir, 'baseline')
    cfg.work_dir = base_dir
    cfg.launcher = 'none'
    ckpt = osp.join(base_dir, f'epoch_{args.epochs}.pth')

    t0 = time.time()
    if args.retrain or not osp.exists(ckpt):
        print(f'[demo] training ResNet-20 on Fashion-MNIST for {args.epochs} '
              f'epoch(s) -> {base_dir}', flush=True)
        runner = build_runner(cfg)
        runner.train()
        train_s = time.time() - t0
    else:
        print(f'[demo] reusing {ckpt} (pass --retrain to train again)')
        train_s = 0.0
    cfg.load_from = ckpt
    runner = build_runner(cfg)
    t1 = time.time()
    metrics = runner.test()
    test_s = time.time() - t1
    model = runner.model
    params = sum(p.numel() for p in model.parameters())

    results = {
        'model': 'ResNet-20 (CIFAR layout, 1 input channel)',
        'dataset': 'Fashion-MNIST (60k train / 10k test)',
        'epochs': args.epochs,
        'params': params,
        'top1': float(metrics['accuracy/top1']),
        'train_seconds': round(train_s, 1),
        'test_seconds': round(test_s, 1),
        'checkpoint': ckpt,
        'torch_threads': torch.get_num_threads(),
    }
    write_json(osp.join(args.work_dir, 'results.json'), results)
    print()
    print_table(
        [['ResNet-20 dense', args.epochs, f'{params / 1e6:.3f} M',
          f'{results["top1"]:.2f}', f'{train_s:.0f}', f'{test_s:.0f}']],
        ['model', 'epochs', 'params', 'top-1 (%)', 'train s', 'test s'])
    print(f'results: {osp.join(args.work_dir, "results.json")}')
    return results


if __name__ == '__main__':
    main()
