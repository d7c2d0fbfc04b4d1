"""AMCPruning end to end: the quick AMC script and --resume."""
import csv
import json
import os

from helpers import PY, ROOT, run_tool, tiny_cfg_options

AMC20 = os.path.join(ROOT, 'configs/amc/amc_resnet20_1xb128_fashionmnist.py')


def test_amc_script_quick_mode_and_resume(tmp_path, tiny_fmnist, tiny_baseline):
    wd = tmp_path / 'amc'
    run_tool(['bash', 'scripts/amc/run_amc_fashionmnist.sh'],
             env={'QUICK': '1', 'DATA_ROOT': tiny_fmnist,
                  'BASE_CKPT': tiny_baseline, 'WORK_DIR': str(wd),
                  'PYTHON': PY})
    for name in ('kmc-pruning.csv', 'amc-episodes.csv', 'amc_search.json',
                 'amc_best_subnet.json', 'pruned_model.pth', 'subnet.json'):
        assert (wd / name).is_file(), name
    report = json.loads((wd / 'report.json').read_text())
    assert report['metric'] == 'amc'
    assert abs(report['flops_ratio'] - 0.5) <= 0.01
    assert report['export_check']['ok']
    best = report['amc']['best']
    assert report['flops_after'] == best['total_macs']
    assert report['amc']['episodes'] == 4
    with open(wd / 'kmc-pruning.csv') as f:
        rows = list(csv.DictReader(f))
    assert rows[0]['ckpt_name'] == best['ckpt_name']
    assert (wd / rows[0]['ckpt_name']).is_file()
    # --resume continues fine-tuning without searching again
    proc = run_tool([
        PY, 'tools/train.py', AMC20, '--work-dir', str(wd), '--resume',
        *tiny_cfg_options(tiny_fmnist, max_epochs=2),
        f'model.init_checkpoint={tiny_baseline}',
        'model.amc_cfg.ddpg_cfg.warmup=2',
        'model.amc_cfg.ddpg_cfg.num_training_episodes=2',
        'model.calib_batches=2', 'model.reward_batches=2',
        'model.bn_recalib_batches=2'])
    log = proc.stdout + proc.stderr
    assert 'resumed after pruning step 1' in log
    assert 'AMC episode' not in log
    report2 = json.loads((wd / 'report.json').read_text())
    assert report2['flops_after'] == report['flops_after']
