"""Command-line pieces shared by ``tools/train.py``, ``tools/test.py`` and
``tools/search.py`` (they import only the installed package)."""
from __future__ import annotations

import argparse
import contextlib
import os
import os.path as osp
import warnings

from mmengine.config import Config, DictAction

from .config_guard import guard_config

__all__ = ['add_runner_args', 'load_config', 'quiet_console',
           'set_local_rank']


def add_runner_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--work-dir``, ``--non-strict``, ``--cfg-options``,
    ``--launcher`` and ``--local-rank`` to ``parser``."""
    parser.add_argument('--work-dir', help='where to save logs and models')
    parser.add_argument(
        '--non-strict', action='store_true',
        help='load a checkpoint (load_from / test checkpoint) even when it '
        'does not fit the model: only matching tensors, mismatches are '
        'warnings (default: an error listing them)')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override config keys, e.g. train_cfg.max_epochs=1')
    parser.add_argument('--launcher', choices=['none', 'pytorch'],
                        default='none', help='job launcher')
    # torch.distributed.launch passes --local-rank; torchrun sets LOCAL_RANK.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def set_local_rank(args: argparse.Namespace) -> argparse.Namespace:
    """Export ``--local-rank`` as ``LOCAL_RANK`` unless a launcher did."""
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def load_config(args: argparse.Namespace) -> Config:
    """The config of ``args.config`` with ``--cfg-options`` applied and
    guarded (:func:`~mmrazor_ext.engine.config_guard.guard_config`:
    mmcv-1.x keys are errors, ``sparsity=`` adds the SparsityHook, unread
    keys are warned about), then the launcher, work dir (default
    ``work_dirs/<config name>``) and ``load_strict`` from the flags."""
    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    guard_config(cfg)
    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])
    if args.non_strict:
        cfg.load_strict = False
    return cfg


@contextlib.contextmanager
def quiet_console(log_path: str):
    """Send ``sys.stdout`` and Python warnings to ``log_path`` (appended).

    A Runner's console output (environment, config dump, hook table, one
    line per logging interval) then lands in that file instead of the
    terminal, while progress bars (``ProgressBarHook``, on ``sys.stderr``)
    stay visible. mmengine's console handler keeps the stream it was given,
    so the file is left open for the rest of the process: later log lines
    of that Runner still go there rather than to a closed stream.

    Yields:
        A dict whose ``'warnings'`` entry counts the warnings written.
    """
    os.makedirs(osp.dirname(osp.abspath(log_path)), exist_ok=True)
    stream = open(log_path, 'a', buffering=1)  # noqa: SIM115 (see above)
    counter = {'warnings': 0, 'path': log_path}
    old_show = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        counter['warnings'] += 1
        stream.write(warnings.formatwarning(message, category, filename,
                                            lineno, line))
    warnings.showwarning = show
    try:
        with contextlib.redirect_stdout(stream):
            yield counter
    finally:
        warnings.showwarning = old_show
        stream.flush()
