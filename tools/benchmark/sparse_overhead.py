"""Cost of sparse training and the speed-up 2:4 can buy.

1. Train-step time of ResNet-20 (CIFAR layout, Fashion-MNIST-sized input)
   with fake-sparse masks (Amba at 70 %, Ampere 2:4 re-applied after every
   optimizer step, STR) relative to the dense model. Goal: <= 1.10x.
2. With a CUDA device: inference speed-up of 2:4 semi-structured linear
   layers (``torch.sparse.to_sparse_semi_structured``) over dense fp16;
   skipped with a message on CPU.

Example::

    python tools/benchmark/sparse_overhead.py --batch-size 64 --steps 20
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from mmrazor_ext.models import CifarResNet
from mmrazor_ext.sparsity import build_sparse_scheduler
from mmrazor_ext.utils import atomic_write_json

VARIANTS = {
    'amba_70': dict(scheduler=dict(type='AmbaLevelPruneScheduler', kwargs=dict(
        total_iters=10 ** 6, sparsity_table=[70], default_input_shape=None))),
    'ampere_2to4': dict(scheduler=dict(type='AmpereScheduler')),
    'str': dict(mask_generator=dict(type='STRMaskGenerator'),
                fake_sparse=dict(type='STRFakeSparse'),
                scheduler=dict(type='BaseScheduler')),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--steps', type=int, default=20, help='timed steps')
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--rounds', type=int, default=3,
                   help='timed cycles = steps x rounds')
    p.add_argument('--threads', type=int, default=0, help='0: torch default')
    p.add_argument('--variants', nargs='+', default=list(VARIANTS),
                   choices=list(VARIANTS))
    p.add_argument('--json', help='write the results to this file')
    return p.parse_args(argv)


def make_model(variant, device):
    torch.manual_seed(0)
    model = CifarResNet(20, num_classes=10, in_channels=1).to(device)
    sched = None
    if variant is not None:
        sched = build_sparse_scheduler(VARIANTS[variant])
        sched.prepare_sparse_model(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9,
                          weight_decay=1e-4)
    if sched is not None:
        # The standalone driving path: hooks on optimizer.step().
        sched.init_optimizer(opt, drive=False)
    return model, opt


def make_step(model, opt, x, y):
    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return step


def train_overhead(args, device):
    """Paired timing: each cycle runs one step of every variant back to
    back, and a variant's ratio is the median over cycles of its step time
    over the dense step time of the same cycle, so load changes on a shared
    machine (bursts longer than a step) cancel out."""
    x = torch.randn(args.batch_size, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    variants = [None] + args.variants
    steps = {v: make_step(*make_model(v, device), x, y) for v in variants}
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    times = {v: [] for v in variants}
    for _ in range(args.steps * args.rounds):
        for v, step in steps.items():
            sync()
            t = time.perf_counter()
            step()
            sync()
            times[v].append(time.perf_counter() - t)
    dense = statistics.median(times[None])
    out = {'dense_s_per_step': dense}
    print(f'ResNet-20 train step, batch {args.batch_size}, {device}, '
          f'{torch.get_num_threads()} thread(s): dense {1000 * dense:.1f} ms '
          f'(median of {len(times[None])})')
    for v in args.variants:
        ratio = statistics.median(a / b for a, b in zip(times[v], times[None]))
        t = statistics.median(times[v])
        out[v] = {'s_per_step': t, 'ratio': ratio}
        verdict = 'ok' if ratio <= 1.10 else 'ABOVE the 1.10x goal'
        print(f'  {v:<12} {1000 * t:.1f} ms  {ratio:.3f}x dense, paired median '
              f'({verdict})')
    return out


def semi_structured_speedup():
    if not torch.cuda.is_available():
        msg = 'skipped: no CUDA device (to_sparse_semi_structured needs one)'
        print(f'2:4 semi-structured inference: {msg}')
        return {'skipped': msg}
    from torch.sparse import to_sparse_semi_structured

    from mmrazor_ext.sparsity import nm_mask
    results = {}
    print('2:4 semi-structured linear inference (fp16, CUDA):')
    for m, k, n in [(3072, 768, 4096), (4096, 4096, 4096), (8192, 8192, 2048)]:
        w = torch.randn(m, k, device='cuda', dtype=torch.half)
        w = w * nm_mask(w).to(w.dtype)
        x = torch.randn(n, k, device='cuda', dtype=torch.half)
        ws = to_sparse_semi_structured(w)
        assert torch.allclose(F.linear(x, w), F.linear(x, ws), rtol=1e-2, atol=1e-1)

        def bench(weight, x=x):
            for _ in range(10):
                F.linear(x, weight)
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(100):
                F.linear(x, weight)
            torch.cuda.synchronize()
            return (time.perf_counter() - t) / 100
        td, ts = bench(w), bench(ws)
        results[f'{m}x{k}@{n}'] = {'dense_ms': 1000 * td, 'sparse_ms': 1000 * ts,
                                   'speedup': td / ts}
        print(f'  W {m}x{k}, {n} tokens: dense {1000 * td:.3f} ms, '
              f'2:4 {1000 * ts:.3f} ms, speed-up {td / ts:.2f}x')
    return results


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    res = {'train_overhead': train_overhead(args, device),
           'semi_structured': semi_structured_speedup(),
           'torch': torch.__version__}
    if args.json:
        atomic_write_json(args.json, res, indent=1)
    return res


if __name__ == '__main__':
    main()
