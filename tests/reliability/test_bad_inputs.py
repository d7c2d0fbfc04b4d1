"""Reliability suite (issue 17, README "Reliability"): bad inputs fail
with named errors and write nothing."""
import os
import pickle

import numpy as np
import pytest
import torch

from helpers import BASELINE, ROOT, load_tool
from helpers.data import make_cifar10, make_fmnist, write_idx
from helpers.reliability import eval_main, tool_args, train_main
from mmrazor_ext.datasets import CIFAR10, DatasetFormatError, FashionMNIST
from mmrazor_ext.engine import CheckpointMismatchError, ConfigFieldError

SEARCH = os.path.join(
    ROOT, 'configs/hybrid_search/hybrid_search_resnet20_1xb128_fashionmnist.py')


def _pruned_checkpoint(path):
    from mmrazor_ext.apis.model_loading import build_from_config
    _, model, _ = build_from_config(BASELINE)
    state = model.state_dict()
    for k in list(state):
        if '.conv1.' in k and 'layer' in k:
            state[k] = state[k][:state[k].shape[0] // 2]
        elif '.bn1.' in k and 'layer' in k and state[k].dim():
            state[k] = state[k][:state[k].shape[0] // 2]
        elif '.conv2.' in k and 'layer' in k:
            state[k] = state[k][:, :state[k].shape[1] // 2]
    torch.save({'state_dict': state, 'meta': {
        'subnet': 'subnet.json', 'algorithm': 'OneShotPruning'}}, path)


def _bad_test_tool(e, checkpoint):
    out = e.tmp / 'metrics.json'
    try:
        eval_main([BASELINE, str(checkpoint), '--out', str(out),
               *tool_args(e, 'test')])
    finally:
        assert not out.exists()


def _bad_pruned(e):
    _pruned_checkpoint(e.tmp / 'pruned_model.pth')
    _bad_test_tool(e, e.tmp / 'pruned_model.pth')


def _bad_json_checkpoint(e):
    (e.tmp / 'subnet.json').write_text('{"format": "subnet"}')
    _bad_test_tool(e, e.tmp / 'subnet.json')


def _fmnist(e, **change):
    root = make_fmnist(str(e.tmp / 'fm'), n_train=16, n_test=4)
    for name, fn in change.items():
        fn(os.path.join(root, name.replace('_', '-')))
    FashionMNIST(data_root=root, split='train', pipeline=[])


def _bad_cifar_shape(e):
    root = make_cifar10(str(e.tmp / 'cifar'), n_per_batch=4)
    with open(os.path.join(root, 'cifar-10-batches-py', 'data_batch_2'),
              'wb') as f:
        pickle.dump({'data': np.zeros((4, 100), np.uint8),
                     'labels': [0] * 4}, f)
    CIFAR10(data_root=root, split='train', verify_md5=False, pipeline=[])


def _sparsity_fractions(e):
    from mmrazor_ext.sparsity import build_sparse_scheduler
    build_sparse_scheduler(dict(scheduler=dict(
        type='AmbaLevelPruneScheduler',
        kwargs=dict(total_iters=9, sparsity_table=[0.3, 0.5, 0.7]))))


def _report_json(e):
    mod = load_tool('tools/analysis/sparsity_report.py')
    (e.tmp / 'subnet.json').write_text('{"format": "subnet"}')
    try:
        mod.main([str(e.tmp / 'subnet.json'), '--json', str(e.tmp / 'r.json')])
    finally:
        assert not (e.tmp / 'r.json').exists()


def _search_option(e, option):
    from tools.search import main
    wd = e.tmp / 'search'
    try:
        main([SEARCH, '--workers', '2', '--work-dir', str(wd),
              '--cfg-options', option])
    finally:
        assert not wd.exists()


def _train_option(e, option):
    wd = e.tmp / 'train'
    try:
        train_main([BASELINE, *tool_args(e, 'train'), option])
    finally:
        assert not wd.exists()


def _truncate(path):
    data = open(path, 'rb').read()
    open(path, 'wb').write(data[:-100])


def _bad_magic(path):
    data = bytearray(open(path, 'rb').read())
    data[2] = 0x0D  # float32 instead of uint8
    open(path, 'wb').write(bytes(data))


# name -> (call, expected error, regex the message must match)
BAD_INPUTS = {
    'pruned checkpoint on the dense config (tools/test.py)': (
        _bad_pruned, CheckpointMismatchError,
        r'(?s)size mismatch backbone\.layer1\.0\.conv1\.weight: checkpoint '
        r'8x16x3x3, model 16x16x3x3.*pruned model.*load_subnet'),
    'subnet JSON as checkpoint (tools/test.py)': (
        _bad_json_checkpoint, ValueError,
        r'subnet\.json is a JSON / text file, not a PyTorch checkpoint'),
    'IDX labels fewer than images': (
        lambda e: _fmnist(e, train_labels_idx1_ubyte=lambda p: write_idx(
            p, np.zeros(10, np.uint8))), DatasetFormatError,
        r'train-images-idx3-ubyte holds 16 images but .*'
        r'train-labels-idx1-ubyte 10 labels'),
    'truncated IDX file': (
        lambda e: _fmnist(e, train_images_idx3_ubyte=_truncate),
        DatasetFormatError, r'train-images-idx3-ubyte: \d+ bytes, expected'),
    'IDX file with a wrong magic': (
        lambda e: _fmnist(e, train_images_idx3_ubyte=_bad_magic),
        DatasetFormatError, r'train-images-idx3-ubyte: IDX of float32'),
    'CIFAR batch of the wrong shape': (
        _bad_cifar_shape, DatasetFormatError,
        r'data_batch_2: "data" must be a uint8 array of shape \(N, 3072\)'),
    'sparsity_table=[0.3, 0.5, 0.7] (fractions)': (
        _sparsity_fractions, ValueError,
        r"sparsity_table: \[0\.3, 0\.5, 0\.7\] looks like fractions.*"
        r"sparsity_unit='fraction'"),
    'sparsity_report.py subnet.json': (
        _report_json, SystemExit,
        r'subnet\.json is a JSON / text file, not a PyTorch checkpoint'),
    'train_cfg.n_trials=abc (tools/search.py)': (
        lambda e: _search_option(e, 'train_cfg.n_trials=abc'), SystemExit,
        r"train_cfg\.n_trials must be an integer >= 1, got 'abc' \(str\)"),
    'train_cfg.n_trials=0 (tools/search.py)': (
        lambda e: _search_option(e, 'train_cfg.n_trials=0'), SystemExit,
        r'train_cfg\.n_trials must be an integer >= 1, got 0'),
    'train_dataloader.batch_size=abc (tools/train.py)': (
        lambda e: _train_option(e, 'train_dataloader.batch_size=abc'),
        ConfigFieldError,
        r"train_dataloader\.batch_size must be an integer >= 1, got 'abc'"),
}


@pytest.mark.parametrize('name', list(BAD_INPUTS))
def test_bad_input_named_error(evil, name):
    call, error, pattern = BAD_INPUTS[name]
    with pytest.raises(error, match=pattern) as info:
        call(evil)
    assert 'weights_only=False' not in str(info.value)


def test_non_strict_opt_out_loads_matching_tensors(evil):
    _pruned_checkpoint(evil.tmp / 'pruned_model.pth')
    out = evil.tmp / 'metrics.json'
    eval_main([BASELINE, str(evil.tmp / 'pruned_model.pth'), '--non-strict',
           '--out', str(out), *tool_args(evil, 'test')])
    assert out.exists()
