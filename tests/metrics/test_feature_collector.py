"""Feature points, the feature collector and what each channel metric
needs (metrics/feature_collector.py; APoZ / HRank from its statistics)."""
import pytest
import torch

from helpers.data import random_batches
from helpers.models import check_scores, resnet20_pruner
from mmrazor_ext.metrics import FeatureCollector, feature_points


@pytest.fixture(scope='module')
def pruner():
    return resnet20_pruner()


def test_feature_points_follow_bn_relu_and_residual(pruner):
    points = feature_points(pruner.graph)
    gm = pruner.graph.gm
    nodes = {n.name: n for n in gm.graph.nodes}
    # conv1 of a block: conv -> bn -> relu; the point is the relu node.
    p = nodes[points['backbone.layer1.0.conv1']]
    assert 'relu' in p.name
    # conv2 of a block: conv -> bn -> add -> relu, after the residual add.
    p2 = nodes[points['backbone.layer1.0.conv2']]
    assert 'relu' in p2.name and p2 is not p
    assert any('add' in a.name for a in p2.all_input_nodes)


def test_class_documents_are_class_means(pruner):
    layer = 'backbone.conv1'
    col = FeatureCollector(pruner.graph, layers=[layer], by='class',
                           num_classes=10)
    x, _ = random_batches(1, (6, 1, 28, 28))[0]
    y = torch.tensor([0, 0, 3, 3, 3, 7])
    col.update(x, y)
    docs = col.documents()[layer]
    assert docs.shape == (3, 16)
    with torch.no_grad():
        feat = torch.relu(pruner.model.backbone.norm1(
            pruner.model.backbone.conv1(x))).mean((2, 3))
    torch.testing.assert_close(docs[1], feat[2:5].mean(0), rtol=1e-5,
                               atol=1e-6)


def test_apoz_and_hrank(pruner):
    col = FeatureCollector(pruner.graph, stats=('zeros', 'rank'))
    for x, y in random_batches(2, (4, 1, 28, 28)):
        col.update(x, y)
    zf = col.zero_fraction()
    assert all(((v >= 0) & (v <= 1)).all() for v in zf.values())
    # Post-ReLU features have zeros.
    assert max(float(v.mean()) for v in zf.values()) > 0.05
    ranks = col.mean_rank()
    assert all((v <= 28).all() for v in ranks.values())
    check_scores(pruner, pruner.get_metric_local('apoz', zf))
    check_scores(pruner, pruner.get_metric_local('hrank', ranks))


def test_feature_metrics_require_contents(pruner):
    for metric in ('cdp', 'apoz', 'hrank'):
        with pytest.raises(ValueError, match=metric):
            pruner.get_metric_local(metric)


def test_every_channel_metric_declares_what_it_needs(pruner):
    from mmrazor_ext.metrics import ChannelMetric, collect_contents
    from mmrazor_ext.registry import METRICS
    served = {'weights', 'pooled', 'zeros', 'rank', 'gradients', 'fm_gram'}
    channel = {n: c for n, c in METRICS.module_dict.items()
               if issubclass(c, ChannelMetric)}
    assert {'l1', 'l2', 'bn_scale', 'cdp', 'apoz', 'hrank', 'taylor',
            'fm_reconstruction'} <= set(channel)
    for name, cls in channel.items():
        assert cls.needs in served, name
        assert cls.requires_features == (cls.needs != 'weights'), name
    batches = random_batches(2, (4, 1, 28, 28))
    assert collect_contents('weights', pruner.graph, pruner.model, batches,
                            to_tensors=lambda b: b) is None
    zf = collect_contents('zeros', pruner.graph, pruner.model, batches,
                          to_tensors=lambda b: b)
    col = FeatureCollector(pruner.graph, stats=('zeros',))
    for x, y in batches:
        col.update(x, y)
    for k, v in col.zero_fraction().items():
        torch.testing.assert_close(zf[k], v)
    with pytest.raises(ValueError, match='nothing serves'):
        collect_contents('magic', pruner.graph, pruner.model, batches,
                         to_tensors=lambda b: b)


def test_collector_options_leave_the_metric_config():
    from mmrazor_ext.metrics import collector_options
    cfg = dict(type='fm_reconstruction', n_points_per_fm=4)
    assert collector_options(cfg) == (dict(type='fm_reconstruction'),
                                      dict(n_points_per_fm=4))
    assert collector_options(dict(type='cdp', coe=0.5)) == (
        dict(type='cdp', coe=0.5), {})
