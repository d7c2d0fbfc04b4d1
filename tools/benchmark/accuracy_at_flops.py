"""Top-1 of pruning metrics at the same FLOPs target, side by side.

One trained ResNet (CIFAR layout) on Fashion-MNIST; each method prunes a copy
to ``--flops-ratio`` of the FLOPs, recalibrates BN, is exported (physically
sliced) and fine-tuned with the same budget. Methods: CDP, L1, Taylor (one
global threshold), uniform L1 and uniform random. Prints one table and
writes ``accuracy_at_flops.json`` / ``.csv`` to ``--out-dir``.

Budgets (``--baseline-epochs``, ``--finetune-epochs``, ``--train-samples``)
make it run in minutes (quick) or as the full experiment:
    python tools/benchmark/accuracy_at_flops.py --depth 56 \\
        --baseline-epochs 3 --finetune-epochs 1            # full, ~1 h on 2 cores
    python tools/benchmark/accuracy_at_flops.py --depth 20 \\
        --baseline-epochs 1 --finetune-epochs 1 --train-samples 20000  # quick
"""
import argparse
import copy
import csv
import json
import os
import os.path as osp
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402
from tqdm import tqdm  # noqa: E402

MEAN, STD = 72.94, 90.02
METHODS = ('cdp', 'l1', 'taylor', 'uniform_l1', 'random')


def load_fmnist(root: str, split: str, limit: int | None = None):
    from mmrazor_ext.datasets import FashionMNIST
    ds = FashionMNIST(data_root=root, split=split, pipeline=[],
                      lazy_init=False)
    n = len(ds) if limit is None else min(limit, len(ds))
    x = torch.stack([torch.from_numpy(ds.get_data_info(i)['img'])
                     for i in range(n)]).float()
    y = torch.tensor([int(ds.get_data_info(i)['gt_label']) for i in range(n)])
    return ((x - MEAN) / STD).unsqueeze(1), y


def augment(x):
    # Random 2-px shift and horizontal flip, as the training configs do.
    pad = F.pad(x, (2, 2, 2, 2))
    i, j = torch.randint(0, 5, (2,)).tolist()
    x = pad[:, :, i:i + 28, j:j + 28]
    flip = torch.rand(x.shape[0]) < 0.5
    x[flip] = x[flip].flip(-1)
    return x


def train(model, loader, epochs, lr, desc):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9,
                          weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        # torch.optim OneCycleLR divides by zero below ~8 steps.
        opt, max_lr=lr, total_steps=max(epochs * len(loader), 8),
        pct_start=0.25)
    model.train()
    for ep in range(epochs):
        for x, y in tqdm(loader, desc=f'{desc} epoch {ep + 1}/{epochs}',
                         leave=False):
            loss = F.cross_entropy(model(augment(x)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model


@torch.no_grad()
def cached_baseline(depth: int, loader, epochs: int, out_dir: str):
    """A ResNet (CIFAR layout) trained ``epochs`` on ``loader``'s data, cached
    in ``out_dir`` by depth, epochs and sample count."""
    from mmrazor_ext.engine import safe_load
    from mmrazor_ext.models import CifarResNet
    ckpt = osp.join(out_dir, f'baseline_r{depth}_{epochs}e_'
                    f'{len(loader.dataset)}.pth')
    model = CifarResNet(depth, 10, 1)
    if osp.exists(ckpt):
        model.load_state_dict(safe_load(ckpt))
    else:
        train(model, loader, epochs, 0.2, 'baseline')
        torch.save(model.state_dict(), ckpt + '.tmp')
        os.replace(ckpt + '.tmp', ckpt)
    return model


def top1(model, loader):
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += int((model(x).argmax(1) == y).sum())
        total += y.numel()
    return 100.0 * correct / total


def prune(method, model, train_loader, flops_ratio, seed, metric_batches):
    from mmrazor_ext.metrics import FeatureCollector, TaylorAccumulator
    from mmrazor_ext.pruners import ChannelPruner
    from mmrazor_ext.utils.evaluation import recalibrate_bn
    model = copy.deepcopy(model).eval()
    pruner = ChannelPruner(model, torch.randn(1, 1, 28, 28))
    batches = [b for _, b in zip(range(metric_batches), train_loader)]
    if method == 'cdp':
        col = FeatureCollector(pruner.graph, by='class', num_classes=10)
        for x, y in batches:
            col.update(x, y)
        scores = pruner.get_metric_local('cdp', col.documents())
    elif method == 'taylor':
        acc = TaylorAccumulator(pruner.graph, model)
        scores = pruner.get_metric_local('taylor', acc.run(
            batches, lambda b: F.cross_entropy(model(b[0]), b[1])))
    elif method == 'random':
        g = torch.Generator().manual_seed(seed)
        scores = {n: torch.rand(s.num_channels, generator=g)
                  for n, s in pruner.channel_spaces.items()}
    else:
        scores = pruner.get_metric_local('l1')
    mode = 'uniform' if method in ('uniform_l1', 'random') else 'global'
    subnet = pruner.sample_subnet_for_flops(flops_ratio, scores, mode=mode)
    pruner.set_subnet(subnet)
    recalibrate_bn(model, batches, len(batches))
    small = pruner.export()
    return small, pruner.estimate_flops(subnet) / pruner.original_flops


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--depth', type=int, default=56)
    p.add_argument('--data-root', default='data/fashion_mnist')
    p.add_argument('--baseline-epochs', type=int, default=3)
    p.add_argument('--finetune-epochs', type=int, default=1)
    p.add_argument('--train-samples', type=int, default=None)
    p.add_argument('--test-samples', type=int, default=None)
    p.add_argument('--flops-ratio', type=float, default=0.5)
    p.add_argument('--methods', nargs='+', default=list(METHODS),
                   choices=METHODS)
    p.add_argument('--metric-batches', type=int, default=20)
    p.add_argument('--batch-size', type=int, default=128)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--out-dir', default='work_dirs/benchmark_accuracy_at_flops')
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    xs, ys = load_fmnist(args.data_root, 'train', args.train_samples)
    xt, yt = load_fmnist(args.data_root, 'test', args.test_samples)
    train_loader = DataLoader(TensorDataset(xs, ys), args.batch_size,
                              shuffle=True, drop_last=True)
    test_loader = DataLoader(TensorDataset(xt, yt), 512)
    os.makedirs(args.out_dir, exist_ok=True)
    t0 = time.time()
    model = cached_baseline(args.depth, train_loader, args.baseline_epochs,
                            args.out_dir)
    dense = top1(model, test_loader)
    rows = [{'method': 'dense', 'flops_ratio': 1.0, 'top1_pruned': dense,
             'top1_finetuned': dense}]
    for method in args.methods:
        torch.manual_seed(args.seed)
        small, ratio = prune(method, model, train_loader, args.flops_ratio,
                             args.seed, args.metric_batches)
        right_after = top1(small, test_loader)
        train(small, train_loader, args.finetune_epochs, 0.05, method)
        rows.append({'method': method, 'flops_ratio': round(ratio, 4),
                     'top1_pruned': right_after,
                     'top1_finetuned': top1(small, test_loader)})
        print(f"{method}: {rows[-1]}", flush=True)
    budget = {k: getattr(args, k) for k in (
        'depth', 'baseline_epochs', 'finetune_epochs', 'flops_ratio',
        'metric_batches', 'seed')}
    budget.update(train_samples=len(xs), test_samples=len(xt),
                  seconds=round(time.time() - t0, 1))
    with open(osp.join(args.out_dir, 'accuracy_at_flops.json.tmp'), 'w') as f:
        json.dump({'budget': budget, 'rows': rows}, f, indent=2)
    os.replace(osp.join(args.out_dir, 'accuracy_at_flops.json.tmp'),
               osp.join(args.out_dir, 'accuracy_at_flops.json'))
    with open(osp.join(args.out_dir, 'accuracy_at_flops.csv'), 'w',
              newline='') as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f'\nbudget: {budget}')
    print(f"{'method':<12} {'FLOPs':>7} {'top-1 pruned+BN':>16} "
          f"{'top-1 fine-tuned':>17} {'vs dense':>9}")
    for r in rows:
        print(f"{r['method']:<12} {r['flops_ratio']:>7.3f} "
              f"{r['top1_pruned']:>16.2f} {r['top1_finetuned']:>17.2f} "
              f"{r['top1_finetuned'] - dense:>+9.2f}")
    return rows


if __name__ == '__main__':
    main()
