"""Run a search config (hybrid search) with one or several workers.

All workers share the config's Optuna storage (default
``sqlite:///<work_dir>/search.db``), so they cooperate on one study and a
re-run resumes it. With ``--workers N`` this starts N ``tools/train.py``
processes, waits for them, then writes the results once (Pareto JSON, best
subnet per FLOPs target, PNG). To spread a study over several machines,
give every host the same ``train_cfg.storage`` (any SQLAlchemy URL) and run
this script on each.

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

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

from tools.train import main as train_main  # noqa: E402


def with_options(argv: list[str], *options: str) -> list[str]:
    """``argv`` with ``options`` added to its ``--cfg-options`` (argparse
    keeps only the last occurrence of the flag, so merge, don't append)."""
    argv = list(argv)
    if '--cfg-options' in argv:
        i = argv.index('--cfg-options') + 1
        return argv[:i] + list(options) + argv[i:]
    return argv + ['--cfg-options', *options]


def main(argv=None):
    parser = argparse.ArgumentParser(
        description='Search with N workers on one Optuna study; other '
        'arguments are those of tools/train.py')
    parser.add_argument('--workers', type=int, default=1,
                        help='worker processes sharing the study')
    args, rest = parser.parse_known_args(argv)
    if args.workers < 1:
        parser.error(f'--workers must be >= 1, got {args.workers}')
    if args.workers == 1:
        return train_main(rest)
    procs = []
    for i in range(args.workers):
        env = dict(os.environ, MMRAZOR_SEARCH_WORKER=str(i))
        cmd = [sys.executable, osp.join(ROOT, 'tools', 'train.py'),
               *with_options(rest, 'train_cfg.write_results=False')]
        procs.append(subprocess.Popen(cmd, env=env))
        time.sleep(1.5)  # distinct log directories (timestamped per second)
    codes = [p.wait() for p in procs]
    if any(codes):
        sys.exit(f'search workers exited with {codes}; re-run the same '
                 'command to resume the study')
    # Every trial is done: this run only writes the results.
    return train_main(rest)


if __name__ == '__main__':
    main()
