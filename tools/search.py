"""Run a search config (hybrid search) with one or several workers.

All workers share the config's Optuna storage (default
``sqlite:///<work_dir>/search.db``), so they cooperate on one study and a
re-run resumes it. With ``--workers N`` this starts N ``tools/train.py``
processes, waits for them, then writes the results once (Pareto JSON, best
subnet per FLOPs target, PNG). The study stops at exactly ``n_trials``
completed trials: a worker whose trial would exceed the budget (counting
the lower-numbered trials still running elsewhere) prunes it and stops. To
spread a study over several machines, give every host the same
``train_cfg.storage`` (any SQLAlchemy URL) and run this script on each.

Examples:
    python tools/search.py \
        configs/hybrid_search/hybrid_search_resnet20_1xb128_fashionmnist.py
    python tools/search.py CONFIG --workers 2 --cfg-options train_cfg.n_trials=200
"""
import argparse
import os
import os.path as osp
import subprocess
import sys
import time

from mmengine.config import Config, DictAction

from mmrazor_ext.engine.config_checks import ConfigFieldError, check_config
from mmrazor_ext.engine.config_guard import check_legacy_keys

TRAIN = osp.join(osp.dirname(osp.abspath(__file__)), 'train.py')


def with_options(argv: list[str], *options: str) -> list[str]:
    """``argv`` with ``options`` added to its ``--cfg-options`` (argparse
    keeps only the last occurrence of the flag, so merge, don't append)."""
    argv = list(argv)
    if '--cfg-options' in argv:
        i = argv.index('--cfg-options') + 1
        return argv[:i] + list(options) + argv[i:]
    return argv + ['--cfg-options', *options]


def check_args(rest: list[str]) -> None:
    """Load the config with its ``--cfg-options`` and check its fields, so
    a bad value stops here instead of in every worker."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument('config')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    known, _ = parser.parse_known_args(rest)
    cfg = Config.fromfile(known.config)
    if known.cfg_options:
        cfg.merge_from_dict(known.cfg_options)
    check_legacy_keys(cfg, 'tools/search.py')
    check_config(cfg)


def train(argv: list[str], env: dict | None = None) -> subprocess.Popen:
    """Start ``tools/train.py argv``."""
    return subprocess.Popen([sys.executable, TRAIN, *argv], env=env)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description='Search with N workers on one Optuna study; other '
        'arguments are those of tools/train.py')
    parser.add_argument('--workers', type=int, default=1,
                        help='worker processes sharing the study')
    args, rest = parser.parse_known_args(argv)
    if args.workers < 1:
        parser.error(f'--workers must be >= 1, got {args.workers}')
    try:
        check_args(rest)
    except ConfigFieldError as err:
        sys.exit(f'error: {err}')
    if args.workers == 1:
        code = train(rest).wait()
        if code:
            sys.exit(code)
        return
    procs = []
    for i in range(args.workers):
        env = dict(os.environ, MMRAZOR_SEARCH_WORKER=str(i))
        procs.append(train(with_options(rest, 'train_cfg.write_results=False'),
                           env=env))
        time.sleep(1.5)  # distinct log directories (timestamped per second)
    codes = [p.wait() for p in procs]
    if any(codes):
        sys.exit(f'search workers exited with {codes}; re-run the same '
                 'command to resume the study')
    # Every trial is done: this run only writes the results.
    code = train(rest).wait()
    if code:
        sys.exit(code)


if __name__ == '__main__':
    main()
