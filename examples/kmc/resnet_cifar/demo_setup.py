"""The steps both Knight-MC demos share: the common arguments, steps 1 and
2 of Knight's examples (load the data and a trained ResNet-20; define loss,
optimizer and LR schedule as for ordinary training), re-training the
compressed model and writing the results."""
from __future__ import annotations

import argparse
import json
import os
import os.path as osp
from dataclasses import dataclass

import torch
from train_val import fmnist_loader, pretrained_model, train, validate

from mmrazor_ext.models import CifarResNet

HERE = osp.dirname(osp.abspath(__file__))


def demo_parser(description: str, *, config: str, work_dir: str,
                work_dir_help: str, epochs: int, epochs_help: str,
                quick_help: str) -> argparse.ArgumentParser:
    """The arguments both demos take (``config``: the YAML next to this
    file; ``epochs``: training epochs after compression)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument('--data-dir', default='data/fashion_mnist')
    p.add_argument('--config', default=osp.join(HERE, config))
    p.add_argument('--pretrained', help='trained ResNet-20 weights (a '
                   'tools/train.py checkpoint of the baseline config works)')
    p.add_argument('--work-dir', default=work_dir, help=work_dir_help)
    p.add_argument('--baseline-epochs', type=int, default=2)
    p.add_argument('--epochs', type=int, default=epochs, help=epochs_help)
    p.add_argument('--train-samples', type=int, default=None)
    p.add_argument('--test-samples', type=int, default=2000)
    p.add_argument('--quick', action='store_true', help=quick_help)
    return p


@dataclass
class DemoSetup:
    """The data, the trained model and its training objects."""

    train_loader: torch.utils.data.DataLoader
    test_loader: torch.utils.data.DataLoader
    model: torch.nn.Module
    dense: dict                 # validate() of the trained model
    criterion: torch.nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler


def prepare(args: argparse.Namespace) -> DemoSetup:
    """Seed, apply ``--quick``'s data budget, create ``--work-dir``, load
    the data and the trained model (printing its accuracy) and define the
    training objects (one-cycle SGD over ``args.epochs``)."""
    torch.manual_seed(0)
    if args.quick:
        args.train_samples = args.train_samples or 512
        args.test_samples = min(args.test_samples, 256)
        args.baseline_epochs = 1
    os.makedirs(args.work_dir, exist_ok=True)

    # load the data set and the pre-trained model
    train_loader, test_loader = fmnist_loader(
        args.data_dir, train_limit=args.train_samples,
        test_limit=args.test_samples)
    model = CifarResNet(20, num_classes=10, in_channels=1)
    pretrained_model(model, train_loader, args.work_dir,
                     args.baseline_epochs, args.pretrained)
    dense = validate(model, test_loader)
    print(f"dense model: top-1 {dense['ind1']:.2f} %")

    # loss, optimizer and learning rate (as for ordinary training)
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9,
                                weight_decay=5e-4, nesterov=True)
    lr_scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, 0.05, total_steps=max(8, args.epochs * len(train_loader)))
    return DemoSetup(train_loader, test_loader, model, dense, criterion,
                     optimizer, lr_scheduler)


def retrain(setup: DemoSetup, epochs: int, result_info: dict, what: str
            ) -> dict:
    """Train the compressed model ``epochs`` epochs with the setup's
    optimizer and schedule, validating after each (``what``: the kind of
    training, for the log). Returns the last ``validate`` dict
    (``result_info`` when ``epochs`` is 0)."""
    for epoch in range(epochs):
        train_acc1, _, train_loss = train(setup.model, setup.optimizer,
                                          setup.criterion, setup.train_loader,
                                          setup.lr_scheduler)
        result_info = validate(setup.model, setup.test_loader)
        print(f"{what} epoch {epoch + 1}: train top-1 {train_acc1:.2f}, "
              f"test top-1 {result_info['ind1']:.2f} %")
    return result_info


def log_file(work_dir: str, name: str) -> str:
    """``work_dir/logs/name``, its folder created."""
    path = osp.join(work_dir, 'logs', name)
    os.makedirs(osp.dirname(path), exist_ok=True)
    return path


def write_results(work_dir: str, results: dict) -> dict:
    """Write ``work_dir/results.json``, print it; returns ``results``."""
    with open(osp.join(work_dir, 'results.json'), 'w') as f:
        json.dump(results, f, indent=2)
    print(json.dumps(results, indent=2))
    return results
