"""Knight YAMLs as users write them, for both facades (apis/mc_pruning.py,
apis/mc_sparsity.py)."""
import pytest


def test_knight_yaml_text_values_and_tabs(tmp_path):
    """Knight YAMLs as users write them: ``None`` / numbers as text are
    converted; a tab in the indentation is an error naming the line."""
    from mmrazor_ext.apis.mc_pruning import load_pruning_config
    from mmrazor_ext.apis.mc_sparsity import load_config
    from mmrazor_ext.sparsity import SparsityConfigError

    sp = tmp_path / 'sparsity.yaml'
    sp.write_text('app_args:\n  arch: resnet20\n  device: "0"\n'
                  'asp_cfg:\n  sparsity_method: CustomPruner\n'
                  '  target_sparsity: "0.5"\nnetwork: None\n')
    cfg = load_config(str(sp))
    assert cfg['asp_cfg']['target_sparsity'] == 0.5
    assert cfg['network'] is None
    pr = tmp_path / 'pruning.yaml'
    pr.write_text('app_args:\n  arch: resnet20\n'
                  '  input_shape: [1, 1, 28, 28]\n  device: "0"\n'
                  'amc_cfg:\n  target_density: 0.5\n')
    assert load_pruning_config(str(pr))['app_args']['device'] in (0, '0')
    tabbed = tmp_path / 'tabbed.yaml'
    tabbed.write_text('app_args:\n\tarch: resnet20\n')
    for loader in (load_config, load_pruning_config):
        with pytest.raises(SparsityConfigError, match=r'line 2: a tab'):
            loader(str(tabbed))
