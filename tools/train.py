"""Train a model (or run a compression algorithm) from an mm config.

Examples:
    python tools/train.py configs/baselines/resnet20_1xb128_fashionmnist.py
    python tools/train.py CONFIG --resume            # latest in work_dir
    python tools/train.py CONFIG --resume PATH.pth   # a given checkpoint
    torchrun --nproc_per_node 2 tools/train.py CONFIG --launcher pytorch

``--resume`` wins over ``load_from``: with both, training continues from the
resumed checkpoint and ``load_from`` only initialises a run that has nothing
to resume yet (the log names the file used).
"""
import argparse

from mmengine.config import Config

from mmrazor_ext.engine.cli import add_runner_args, load_config, set_local_rank
from mmrazor_ext.engine.runner import build_runner


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train with mmrazor_ext')
    parser.add_argument('config', help='train config file path')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from the latest checkpoint in the work_dir, or from '
        'the given checkpoint path (wins over load_from)')
    parser.add_argument('--amp', action='store_true',
                        help='automatic mixed precision (CUDA only)')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the LR by total batch size')
    add_runner_args(parser)
    return set_local_rank(parser.parse_args(argv))


def merge_args(cfg: Config, args) -> Config:
    """Fold the training flags into a config (``--cfg-options`` already
    applied, so ``--resume`` decides over a ``load_from`` given there)."""
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if args.resume == 'auto':
        cfg.resume = True
        cfg.resume_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.resume_from = args.resume
    if args.auto_scale_lr:
        cfg.auto_scale_lr.enable = True
    return cfg


def main(argv=None):
    args = parse_args(argv)
    cfg = merge_args(load_config(args), args)
    runner = build_runner(cfg)
    runner.train()


if __name__ == '__main__':
    main()
