"""The Knight-MC sparsity facade (apis/mc_sparsity.py): the listed
weights get masks, save / load, bad YAML."""
import pytest
import torch
import torch.nn.functional as F

from helpers.data import random_batches
from helpers.models import WideNet
from mmrazor_ext.apis import MCSparsity
from mmrazor_ext.sparsity import SparsityConfigError, block_aligned, dense_weight

KNIGHT_YAML = """
app_args:
  arch: widenet
  dataset: synthetic
  device: 0
asp_cfg:
  sparsity_method: {method}
  target_sparsity: 0.5
network:
  widenet: [{layers}]
"""


def test_mc_sparsity_custom_pruner_save_load(tmp_path):
    cfg = tmp_path / 'sparsity_config.yaml'
    cfg.write_text(KNIGHT_YAML.format(method='CustomPruner',
                                      layers='conv2.weight, conv3.weight'))
    torch.manual_seed(0)
    model = WideNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    MCSparsity.sparse_model({'model_fn': model, 'optimizer': opt,
                             'config_file': str(cfg)})
    for x, y in random_batches(2, shape=(2, 3, 16, 16), classes=64):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()  # masks re-applied by the optimizer hook
    for name in ('conv2', 'conv3'):
        w = dense_weight(getattr(model, name))
        assert block_aligned(w) and (w == 0).any(), name
    assert (model.fc.weight != 0).all()  # not listed in network
    out = tmp_path / 'sparse.pth'
    MCSparsity.save_sparse_model(model, str(out), extras={'acc1': 12.5})
    fresh = WideNet()
    MCSparsity.load_sparse_model(fresh, str(out))
    x = torch.randn(2, 3, 16, 16)
    model.eval()
    fresh.eval()
    assert torch.allclose(model(x), fresh(x), atol=1e-6)
    assert torch.load(out, weights_only=True)['acc1'] == 12.5


def test_mc_sparsity_2to4_and_bad_yaml(tmp_path):
    cfg = tmp_path / 'a.yaml'
    cfg.write_text(KNIGHT_YAML.format(method='Pruner2to4', layers=''))
    model = WideNet()
    MCSparsity.sparse_model({'model_fn': model, 'config_file': str(cfg)})
    from mmrazor_ext.sparsity import nm_compliant
    assert nm_compliant(model.conv2.weight) and nm_compliant(model.fc.weight)
    bad = tmp_path / 'b.yaml'
    bad.write_text(KNIGHT_YAML.format(method='CustomPruner', layers='')
                   .replace('target_sparsity', 'target_sparsty'))
    with pytest.raises(SparsityConfigError, match='target_sparsty'):
        MCSparsity.sparse_model({'model_fn': WideNet(), 'config_file': str(bad)})
    missing = tmp_path / 'c.yaml'
    missing.write_text(KNIGHT_YAML.format(method='CustomPruner', layers='nope.weight'))
    with pytest.raises(SparsityConfigError, match='nope'):
        MCSparsity.sparse_model({'model_fn': WideNet(), 'config_file': str(missing)})


def test_mc_sparsity_network_lists_exactly_the_masked_weights(tmp_path):
    """Knight's sparsity ``network:`` names weights: exactly those layers
    get masks; an entry that cannot be sparsified is an error naming it,
    raised before the model is touched."""
    cfg = tmp_path / 'n.yaml'
    cfg.write_text(KNIGHT_YAML.format(method='Pruner2to4',
                                      layers='conv3.weight, fc'))
    model = WideNet()
    MCSparsity.sparse_model({'model_fn': model, 'config_file': str(cfg)})
    assert list(model.__dict__['_mc_sparsity'].layers) == ['conv3', 'fc']
    assert not hasattr(model.conv2, 'weight_fake_sparse')
    cases = [('big.weight', r"big.weight cannot be sparsified with "
              r"CustomPruner: kernel \(9, 9\) > 8"),
             ('conv1.weight', 'conv1.weight cannot be sparsified'),
             ('bn1.weight', "'bn1.weight' is a BatchNorm2d"),
             ('conv2.bias', "'conv2.bias': only weights"),
             ('conv2.weight, conv2', 'listed twice')]
    for layers, match in cases:
        cfg.write_text(KNIGHT_YAML.format(method='CustomPruner',
                                          layers=layers))
        model = WideNet()
        with pytest.raises(SparsityConfigError, match='network.widenet: .*'
                           + match):
            MCSparsity.sparse_model({'model_fn': model,
                                     'config_file': str(cfg)})
        assert not any(hasattr(m, 'weight_fake_sparse')
                       for m in model.modules())
