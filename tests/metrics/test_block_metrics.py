"""Block (layer) metrics and their feature collector
(metrics/block_base.py, block_cka.py, block_cosine.py,
block_weight_norm.py)."""
import copy

import pytest
import torch

from helpers.models import randomise

X = torch.randn(1, 1, 28, 28)


@pytest.fixture(scope='module')
def resnet20():
    from mmrazor_ext.models import CifarResNet
    torch.manual_seed(0)
    return randomise(CifarResNet(20, 10, 1)).eval()


def test_block_metrics_rank_a_dead_block_last(resnet20):
    from mmrazor_ext.graph import find_blocks
    from mmrazor_ext.metrics import BlockFeatureCollector
    from mmrazor_ext.registry import METRICS
    model = copy.deepcopy(resnet20)
    dead = 'backbone.layer2.1'
    model.get_submodule(dead).norm2.weight.data.zero_()
    model.get_submodule(dead).norm2.bias.data.zero_()
    blocks = find_blocks(model, X)
    col = BlockFeatureCollector(blocks)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        col.update(torch.randn(8, 1, 28, 28, generator=gen))
    stats = col.statistics()
    assert stats[dead]['n'] == 16
    for name in ('block_cka', 'block_cosine', 'block_weight_norm'):
        scores = METRICS.get(name)()(blocks, model, stats)
        assert set(scores) == set(blocks.blocks)
        live = [v for k, v in scores.items() if k != dead]
        # branch output 0 and input >= 0 (after ReLU): out == in exactly
        assert scores[dead] == pytest.approx(0.0, abs=1e-6), name
        assert min(live) > 1e-4, name
    cos = METRICS.get('block_cosine')()(blocks, model, stats)
    assert cos['backbone.layer2.0'] == float('inf')  # shapes differ


def test_linear_cka_matches_formula_and_is_scale_invariant():
    from mmrazor_ext.metrics import hsic_terms
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 5, generator=gen).double()
    y = x @ torch.randn(5, 7, generator=gen).double()

    def cka(a, b):
        kl, kk, ll = hsic_terms(a, b)
        return float(kl / (kk * ll).sqrt())
    xc, yc = x - x.mean(0), y - y.mean(0)
    # Kornblith et al.: ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)
    ref = float((yc.t() @ xc).norm() ** 2 /
                ((xc.t() @ xc).norm() * (yc.t() @ yc).norm()))
    assert cka(x, y) == pytest.approx(ref, rel=1e-9)
    assert cka(x, 3 * y) == pytest.approx(ref, rel=1e-9)
    assert cka(x, x) == pytest.approx(1.0)
    with pytest.raises(ValueError, match='needs collected features'):
        from mmrazor_ext.registry import METRICS
        METRICS.get('block_cka')()(None, None, None)


def test_block_collector_keeps_the_model_mode():
    """Collecting block features runs in eval mode and leaves every module
    in the mode it had (the GraphModule shares the model's modules)."""
    from mmrazor_ext.graph import find_blocks
    from mmrazor_ext.metrics import BlockFeatureCollector
    from mmrazor_ext.models import CifarResNet
    model = CifarResNet(20, 10, 1).eval()
    x = torch.randn(2, 1, 28, 28)
    col = BlockFeatureCollector(find_blocks(model, x))
    col.update(x)
    assert not any(m.training for m in model.modules())
