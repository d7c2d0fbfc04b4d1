"""Importance metrics and the feature collector (issue 5 groundwork)."""
import math

import pytest
import torch

from mmrazor_ext.metrics import (
    FeatureCollector,
    TaylorAccumulator,
    cdp_scores,
    feature_points,
)
from mmrazor_ext.models import CifarResNet
from mmrazor_ext.pruners import ChannelPruner


def _cdp_by_hand(a, coe=0.0):
    """The DESIGN.md formula written as plain loops."""
    n, c = len(a), len(a[0])
    beta = 1.0 if coe == 0 else math.log(math.e * c / coe)
    tf = [[beta * a[i][j] / sum(a[i]) for j in range(c)] for i in range(n)]
    mean = [sum(a[i][j] for i in range(n)) / n for j in range(c)]
    m = [[1.0 if a[i][j] >= mean[j] else 0.0 for j in range(c)]
         for i in range(n)]
    out = []
    for j in range(c):
        df = sum(m[i][j] for i in range(n))
        tf_bar = sum(tf[i][j] * m[i][j] for i in range(n)) / df
        out.append(tf_bar * math.log(n / (df + 1)))
    return out


@pytest.mark.parametrize('coe', [0.0, 2.0])
def test_cdp_matches_hand_computation(coe):
    # No entry equals its column mean: ties are float-precision dependent.
    a = torch.tensor([[0.9, 0.1, 0.0, 0.5],
                      [0.2, 0.8, 0.1, 0.45],
                      [0.1, 0.2, 0.9, 0.4],
                      [0.3, 0.1, 0.2, 0.6],
                      [0.0, 0.7, 0.3, 0.52]])
    got = cdp_scores(a, coe=coe)
    want = _cdp_by_hand(a.double().tolist(), coe)
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float32),
                               rtol=1e-5, atol=1e-6)


def test_cdp_prefers_discriminative_channel():
    # Channel 0 fires for one class only; channel 1 fires equally for all.
    docs = torch.tensor([[5.0, 1.0], [0.1, 1.0], [0.1, 1.0], [0.1, 1.0],
                         [0.1, 1.0], [0.1, 1.0]])
    s = cdp_scores(docs)
    assert s[0] > s[1]


def test_cdp_rejects_bad_shape():
    with pytest.raises(ValueError, match='documents, channels'):
        cdp_scores(torch.ones(3))


@pytest.fixture(scope='module')
def pruner():
    torch.manual_seed(0)
    model = CifarResNet(20, 10, 1).eval()
    return ChannelPruner(model, example_inputs=torch.randn(1, 1, 28, 28))


def _batches(n=3, bs=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(bs, 1, 28, 28, generator=g),
             torch.randint(0, 10, (bs,), generator=g)) for _ in range(n)]


def _check_scores(pruner, scores):
    assert set(scores) == set(pruner.channel_spaces)
    for name, space in pruner.channel_spaces.items():
        s = scores[name]
        assert s.shape == (space.num_channels,), name
        assert torch.isfinite(s).all(), name


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


@pytest.mark.parametrize('metric', ['l1', 'l2', 'bn_scale'])
def test_weight_metrics_cover_every_space(pruner, metric):
    a = pruner.get_metric_local(metric)
    b = pruner.get_metric_local(metric)
    _check_scores(pruner, a)
    for k in a:
        torch.testing.assert_close(a[k], b[k])


@pytest.mark.parametrize('by', ['class', 'sample'])
def test_cdp_from_collected_features(pruner, by):
    col = FeatureCollector(pruner.graph, stats=('pooled',), by=by,
                           num_classes=10)
    batches = _batches()
    for x, y in batches:
        col.update(x, y)
    docs = col.documents()
    n_docs = len(torch.cat([y for _, y in batches]).unique()) \
        if by == 'class' else 24
    assert all(d.shape[0] == n_docs for d in docs.values())
    scores = pruner.get_metric_local('cdp', docs)
    _check_scores(pruner, scores)
    # Deterministic: a second collection gives the same scores.
    col2 = FeatureCollector(pruner.graph, stats=('pooled',), by=by,
                            num_classes=10)
    for x, y in batches:
        col2.update(x, y)
    again = pruner.get_metric_local('cdp', col2.documents())
    for k in scores:
        torch.testing.assert_close(scores[k], again[k])


def test_class_documents_are_class_means(pruner):
    layer = 'backbone.conv1'
    col = FeatureCollector(pruner.graph, layers=[layer], by='class',
                           num_classes=10)
    x, _ = _batches(1, 6)[0]
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
    for x, y in _batches(2, 4):
        col.update(x, y)
    zf = col.zero_fraction()
    assert all(((v >= 0) & (v <= 1)).all() for v in zf.values())
    # Post-ReLU features have zeros.
    assert max(float(v.mean()) for v in zf.values()) > 0.05
    ranks = col.mean_rank()
    assert all((v <= 28).all() for v in ranks.values())
    _check_scores(pruner, pruner.get_metric_local('apoz', zf))
    _check_scores(pruner, pruner.get_metric_local('hrank', ranks))


def test_taylor_accumulates_over_batches(pruner):
    model = pruner.model
    loss_fn = lambda b: torch.nn.functional.cross_entropy(  # noqa: E731
        model(b[0]), b[1])
    batches = _batches(2, 8)
    acc = TaylorAccumulator(pruner.graph, model)
    total = acc.run(batches, loss_fn)
    per_batch = [TaylorAccumulator(pruner.graph, model).run([b], loss_fn)
                 for b in batches]
    assert acc.num_batches == 2
    for k in total:
        torch.testing.assert_close(
            total[k], (per_batch[0][k] + per_batch[1][k]) / 2)
    assert any(not torch.allclose(per_batch[0][k], per_batch[1][k])
               for k in total)
    _check_scores(pruner, pruner.get_metric_local('taylor', total))


def test_feature_metrics_require_contents(pruner):
    for metric in ('cdp', 'apoz', 'hrank'):
        with pytest.raises(ValueError, match=metric):
            pruner.get_metric_local(metric)


def test_greedy_removal_order_by_hand():
    # Channels 0 and 1 cancel each other; channel 2 is large.
    y = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 3.0], [0.5, 0.5]])
    gram = y @ y.t()
    from mmrazor_ext.metrics import greedy_removal_order
    order = greedy_removal_order(gram).tolist()
    # Removing 3 first costs 0.5, then {0,1} together cancel (+0 net change
    # for their sum), the big channel 2 goes last.
    assert order[-1] == 2
    assert order[0] == 3


def test_fm_reconstruction_metric(pruner):
    from mmrazor_ext.metrics import FMReconstructionCollector
    col = FMReconstructionCollector(pruner.graph, pruner.model,
                                    n_points_per_fm=4)
    grams = col.collect([x for x, _ in _batches(2, 4)])
    assert 'fc' in grams  # the classifier consumes the last space
    for g in grams.values():
        torch.testing.assert_close(g, g.t())
        assert (g.diagonal() >= 0).all()
    _check_scores(pruner, pruner.get_metric_local('fm_reconstruction', grams))


def test_least_squares_weights_recover_layer():
    from mmrazor_ext.metrics import least_squares_weights
    torch.manual_seed(0)
    x = torch.randn(200, 4, 9)
    w = torch.randn(3, 4, 9)
    w[:, 1] = 0  # channel 1 is useless
    y = torch.einsum('pck,ock->po', x, w)
    keep = torch.tensor([True, False, True, True])
    w_new = least_squares_weights(x, y, keep)
    torch.testing.assert_close(w_new, w[:, keep], rtol=1e-4, atol=1e-4)


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
    batches = _batches(2, 4)
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


def test_a_weight_metric_is_one_class(pruner):
    """A new weight metric: one WeightMetric subclass and its decorator."""
    from mmrazor_ext.metrics import WeightMetric
    from mmrazor_ext.registry import METRICS

    @METRICS.register_module('test_linf')
    class LInfMetric(WeightMetric):
        def filter_scores(self, weight):
            return weight.abs().reshape(weight.shape[0], -1).amax(1)

    try:
        _check_scores(pruner, pruner.get_metric_local('test_linf'))
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
