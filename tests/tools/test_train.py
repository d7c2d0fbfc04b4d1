"""tools/train.py, tools/test.py, resume and distributed runs on tiny data."""
import json
import os

import pytest
import torch

from helpers import BASELINE, PY, run_tool, tiny_cfg_options


@pytest.fixture(scope='module')
def no_aug_config(tmp_path_factory):
    """The baseline without random augmentation, so runs are reproducible."""
    path = tmp_path_factory.mktemp('cfg') / 'resnet20_noaug.py'
    path.write_text(
        f"_base_ = ['{BASELINE}']\n"
        "train_dataloader = dict(dataset=dict(\n"
        "    pipeline=[dict(type='mmpretrain.PackInputs')]))\n")
    return str(path)


def _train(config, work_dir, data_root, epochs, end, extra=()):
    opts = tiny_cfg_options(data_root, max_epochs=epochs)
    opts = [o if not o.startswith('param_scheduler.end=') else
            f'param_scheduler.end={end}' for o in opts]
    return run_tool([PY, 'tools/train.py', config, '--work-dir', str(work_dir),
                     *extra, *opts])


# Bit-exact kill -9 / --resume flows (augmentation, workers, inside an
# epoch, --resume over load_from) live in reliability/test_resume.py.


def test_checkpoint_needs_only_allow_listed_globals(tmp_path, tiny_fmnist,
                                                    no_aug_config):
    from mmrazor_ext.engine import safe_globals
    _train(no_aug_config, tmp_path, tiny_fmnist, epochs=1, end=1)
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(
        str(tmp_path / 'epoch_1.pth'))
    allowed = {f'{g.__module__}.{g.__qualname__}' for g in safe_globals()}
    assert set(unsafe) <= allowed, set(unsafe) - allowed
    # the RNG states travel in the checkpoint as plain values
    from mmrazor_ext.engine import safe_load
    rng = safe_load(str(tmp_path / 'epoch_1.pth'))['meta']['rng_state']
    assert set(rng) >= {'python', 'numpy', 'torch'}


def test_resume_from_explicit_path_and_test_tool(tmp_path, tiny_fmnist,
                                                 no_aug_config):
    _train(no_aug_config, tmp_path / 'a', tiny_fmnist, epochs=1, end=2)
    ckpt = tmp_path / 'a' / 'epoch_1.pth'
    proc = _train(no_aug_config, tmp_path / 'b', tiny_fmnist, epochs=2, end=2,
                  extra=['--resume', str(ckpt)])
    assert 'resumed epoch: 1, iter: 8' in proc.stdout + proc.stderr
    out = tmp_path / 'metrics.json'
    run_tool([PY, 'tools/test.py', no_aug_config,
              str(tmp_path / 'b' / 'epoch_2.pth'), '--work-dir',
              str(tmp_path / 't'), '--out', str(out),
              *tiny_cfg_options(tiny_fmnist)])
    metrics = json.loads(out.read_text())
    assert 0.0 <= metrics['accuracy/top1'] <= 100.0


def test_dist_train_two_processes_gloo(tmp_path, tiny_fmnist):
    opts = tiny_cfg_options(tiny_fmnist, batch_size=4)
    proc = run_tool(['bash', 'tools/dist_train.sh', BASELINE, '2',
                     '--work-dir', str(tmp_path), *opts],
                    env={'PORT': str(29500 + os.getpid() % 1000)})
    log = proc.stdout + proc.stderr
    assert 'Distributed training: True' in log
    assert "backend='gloo'" in log or 'gloo' in log
    # 64 images / 2 ranks / batch 4 = 8 iterations per epoch.
    assert 'Epoch(train) [1][8/8]' in log
    from mmrazor_ext.engine import safe_load
    ckpt = safe_load(str(tmp_path / 'epoch_1.pth'))
    assert ckpt['meta']['iter'] == 8
    out = tmp_path / 'dist_metrics.json'
    proc = run_tool(['bash', 'tools/dist_test.sh', BASELINE,
                     str(tmp_path / 'epoch_1.pth'), '2', '--work-dir',
                     str(tmp_path / 'test'), '--out', str(out), *opts],
                    env={'PORT': str(30500 + os.getpid() % 1000)})
    assert 'Epoch(test)' in proc.stdout + proc.stderr
    assert 0 <= json.loads(out.read_text())['accuracy/top1'] <= 100


def test_demo_runs_on_tiny_data(tmp_path, tiny_fmnist):
    opts = tiny_cfg_options(tiny_fmnist)[1:]
    proc = run_tool([PY, 'tools/demo.py', '--epochs', '1', '--work-dir',
                     str(tmp_path), '--cfg-options', *opts])
    assert 'top-1 (%)' in proc.stdout and 'CDP-pruned' in proc.stdout
    # The terminal gets progress bars and a few lines before the table;
    # the Runners' full console output is in each stage's console.log.
    before_table = proc.stdout.split('top-1 (%)')[0]
    assert before_table.count('\n') + proc.stderr.count('\n') <= 50
    assert 'System environment' not in proc.stdout
    assert 'epoch 1/1' in proc.stderr  # the training progress bar
    for stage in ('baseline', 'cdp_pruned'):
        log = (tmp_path / stage / 'console.log').read_text()
        assert 'System environment' in log and 'Epoch(train)' in log
    results = json.loads((tmp_path / 'results.json').read_text())
    assert results['dense']['params'] == 272474 - 2 * 16 * 9  # 1 channel
    assert abs(results['flops_reduction'] - 2.0) < 0.05
    assert results['pruned']['params'] < results['dense']['params']
    assert results['pruned']['latency_ms_b64'] > 0
    for key in ('heatmap', 'kept_ratio'):
        assert open(results['plots'][key], 'rb').read(4) == b'\x89PNG'
    assert 'CDP plots:' in proc.stdout
    # no reconstruction in the demo config: the summary does not list it
    assert 'after BN recalibration' in proc.stdout
    assert 'after reconstruction' not in proc.stdout
    # A second run reuses the checkpoint instead of training again.
    proc = run_tool([PY, 'tools/demo.py', '--epochs', '1', '--work-dir',
                     str(tmp_path), '--cfg-options', *opts])
    assert 'reusing' in proc.stdout
