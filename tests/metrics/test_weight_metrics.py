"""Weight metrics: L1, L2, BN scale and the WeightMetric template
(metrics/l1.py, l2.py, bn_scale.py, templates.py)."""
import pytest
import torch

from helpers.models import check_scores, resnet20_pruner


@pytest.fixture(scope='module')
def pruner():
    return resnet20_pruner()


@pytest.mark.parametrize('metric', ['l1', 'l2', 'bn_scale'])
def test_weight_metrics_cover_every_space(pruner, metric):
    a = pruner.get_metric_local(metric)
    b = pruner.get_metric_local(metric)
    check_scores(pruner, a)
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_a_weight_metric_is_one_class(pruner):
    """A new weight metric: one WeightMetric subclass and its decorator."""
    from mmrazor_ext.metrics import WeightMetric
    from mmrazor_ext.registry import METRICS

    @METRICS.register_module('test_linf')
    class LInfMetric(WeightMetric):
        def filter_scores(self, weight):
            return weight.abs().reshape(weight.shape[0], -1).amax(1)

    try:
        check_scores(pruner, pruner.get_metric_local('test_linf'))
        layer = 'backbone.conv1'
        w = pruner.model.backbone.conv1.weight.detach().clone()
        w[0] = 100.0
        scores = pruner.get_metric_local('test_linf', {layer: w})
        assert max(float(s.max()) for s in scores.values()) >= 100.0
        with pytest.raises(KeyError, match='test_linf: unknown layers'):
            pruner.get_metric_local('test_linf', {'nope': w})
    finally:
        METRICS.module_dict.pop('test_linf')


def test_l1_l2_share_the_weight_template(pruner):
    from mmrazor_ext.metrics import L1Metric, L2Metric, WeightMetric
    assert issubclass(L1Metric, WeightMetric)
    assert issubclass(L2Metric, WeightMetric)
    w = torch.tensor([[3.0, -4.0], [1.0, 1.0]])
    torch.testing.assert_close(L1Metric().filter_scores(w),
                               torch.tensor([3.5, 1.0]))
    torch.testing.assert_close(L2Metric().filter_scores(w),
                               torch.tensor([12.5 ** 0.5, 1.0]))
    with pytest.raises(KeyError, match='l2: unknown layers'):
        pruner.get_metric_local('l2', {'nope': w})
