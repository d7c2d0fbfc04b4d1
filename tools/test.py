"""Evaluate a checkpoint on the config's test set.

The checkpoint must fit the config's model: a mismatch (a pruned model's
file on the dense config, another architecture) is an error listing the
first mismatching keys and shapes; ``--non-strict`` loads only the matching
tensors instead. Any scheme of the safe loader works (path, http(s)://,
torchvision://, open-mmlab://, s3://).

Example:
    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out results.json]
"""
import argparse

from mmrazor_ext.engine.cli import add_runner_args, load_config, set_local_rank
from mmrazor_ext.engine.runner import build_runner
from mmrazor_ext.utils import atomic_write_json


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test with mmrazor_ext')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file or URL')
    parser.add_argument('--out', help='write the metrics to this JSON file')
    add_runner_args(parser)
    return set_local_rank(parser.parse_args(argv))


def main(argv=None) -> dict:
    args = parse_args(argv)
    cfg = load_config(args)
    cfg.load_from = args.checkpoint
    cfg.resume = False
    runner = build_runner(cfg)
    metrics = runner.test()
    if args.out and runner.rank == 0:
        atomic_write_json(args.out, {k: float(v) for k, v in metrics.items()},
                          indent=2)
    return metrics


if __name__ == '__main__':
    main()
