"""Data-driven metrics accept raw feature maps in ``contents`` (issue 18.4).

The seed (004_*) calls ``get_metric_local(metric_name, contents)`` with
``contents={'layer_name': features}``; raw maps must give the same scores
as the collector's statistics of the same data.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from mmrazor_ext.metrics import (
    FeatureCollector,
    FMReconstructionCollector,
    cdp_scores,
    feature_points,
    statistic_contents,
)
from mmrazor_ext.models import CifarResNet
from mmrazor_ext.pruners import ChannelPruner

TOL = dict(rtol=1e-6, atol=1e-6)


@pytest.fixture(scope='module')
def pruner():
    torch.manual_seed(0)
    model = CifarResNet(20, 10, 1).eval()
    return ChannelPruner(model, example_inputs=torch.randn(1, 1, 28, 28))


@pytest.fixture(scope='module')
def batch():
    g = torch.Generator().manual_seed(1)
    return (torch.randn(12, 1, 28, 28, generator=g),
            torch.tensor([0, 3, 3, 7, 0, 1, 7, 7, 3, 0, 1, 3]))


class _Recorder(fx.Interpreter):
    """Keeps the outputs of the named nodes of a GraphModule."""

    def __init__(self, gm, names):
        super().__init__(gm)
        self.names, self.saved = set(names), {}

    def run_node(self, n):
        out = super().run_node(n)
        if n.name in self.names:
            self.saved[n.name] = out.detach()
        return out


def _feature_maps(graph, x):
    """``{producer: features}`` at the collector's feature points."""
    points = feature_points(graph)
    rec = _Recorder(graph.gm, points.values())
    with torch.no_grad():
        rec.run(x)
    return {layer: rec.saved[node] for layer, node in points.items()}


def _assert_scores_equal(a, b):
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], **TOL)


def _collector(graph, x, y=None, **kw):
    col = FeatureCollector(graph, **kw)
    col.update(x, y)
    return col


# -- CDP ---------------------------------------------------------------------
def test_cdp_from_feature_maps_equals_pooled_documents(pruner, batch):
    x, _ = batch
    maps = _feature_maps(pruner.graph, x)
    assert maps['backbone.layer1.0.conv1'].shape == (12, 16, 28, 28)
    docs = {k: v.mean((2, 3)) for k, v in maps.items()}
    from_maps = pruner.get_metric_local('cdp', maps)
    from_docs = pruner.get_metric_local('cdp', docs)
    _assert_scores_equal(from_maps, from_docs)
    # ... and the collector's per-sample documents of the same batch.
    col = _collector(pruner.graph, x, stats=('pooled',), by='sample')
    _assert_scores_equal(from_maps,
                         pruner.get_metric_local('cdp', col.documents()))
    # The formula on one layer, by hand.
    stats = statistic_contents('pooled', pruner.graph,
                               pruner.model, maps, 'cdp')
    layer = 'backbone.layer2.0.conv1'
    torch.testing.assert_close(cdp_scores(stats[layer]),
                               cdp_scores(docs[layer]), **TOL)


def test_cdp_class_documents_from_labels(pruner, batch):
    x, y = batch
    maps = _feature_maps(pruner.graph, x)
    col = _collector(pruner.graph, x, y, stats=('pooled',), by='class',
                     num_classes=10)
    with_labels = {**maps, 'labels': y}
    from_maps = pruner.get_metric_local(dict(type='cdp', coe=2.0),
                                        with_labels)
    from_col = pruner.get_metric_local(dict(type='cdp', coe=2.0),
                                       col.documents())
    _assert_scores_equal(from_maps, from_col)
    # The class documents are the class means of the pooled maps.
    layer = 'backbone.layer3.1.conv2'
    docs = statistic_contents('pooled', pruner.graph, pruner.model,
                              with_labels, 'cdp')[layer]
    pooled = maps[layer].mean((2, 3))
    want = torch.stack([pooled[y == c].mean(0) for c in (0, 1, 3, 7)])
    torch.testing.assert_close(docs, want, **TOL)
    # Pre-pooled per-sample rows with labels give the same documents.
    rows = {**{k: v.mean((2, 3)) for k, v in maps.items()}, 'labels': y}
    _assert_scores_equal(
        from_maps, pruner.get_metric_local(dict(type='cdp', coe=2.0), rows))


def test_seed_style_contents_through_the_pruner(pruner, batch):
    """contents={'layer_name': features} for a few layers, as in 004_*."""
    x, _ = batch
    maps = _feature_maps(pruner.graph, x)
    names = ['backbone.layer1.0.conv1', 'backbone.layer2.1.conv1']
    contents = {n: maps[n] for n in names}
    scores = pruner.get_metric_local('cdp', contents)
    assert set(scores) == set(pruner.channel_spaces)
    for n in names:
        s = cdp_scores(maps[n].mean((2, 3)))
        torch.testing.assert_close(scores[n], s / s.abs().max(), **TOL)


# -- APoZ / HRank ------------------------------------------------------------
def test_apoz_and_hrank_from_maps_equal_collector(pruner, batch):
    x, y = batch
    maps = _feature_maps(pruner.graph, x)
    col = _collector(pruner.graph, x, y, stats=('zeros', 'rank'))
    zf = statistic_contents('zeros', pruner.graph, pruner.model, maps, 'apoz')
    rk = statistic_contents('rank', pruner.graph, pruner.model, maps, 'hrank')
    for k, v in col.zero_fraction().items():
        torch.testing.assert_close(zf[k], v, **TOL)
    for k, v in col.mean_rank().items():
        torch.testing.assert_close(rk[k], v, **TOL)
    # Direct formulas on one layer.
    f = maps['backbone.layer1.1.conv2']
    torch.testing.assert_close(zf['backbone.layer1.1.conv2'],
                               (f == 0).float().mean((0, 2, 3)), **TOL)
    torch.testing.assert_close(rk['backbone.layer1.1.conv2'],
                               torch.linalg.matrix_rank(f).float().mean(0),
                               **TOL)
    _assert_scores_equal(pruner.get_metric_local('apoz', maps),
                         pruner.get_metric_local('apoz', col.zero_fraction()))
    _assert_scores_equal(pruner.get_metric_local('hrank', maps),
                         pruner.get_metric_local('hrank', col.mean_rank()))
    # Labels are ignored by metrics that do not use them.
    _assert_scores_equal(pruner.get_metric_local('apoz', {**maps, 'labels': y}),
                         pruner.get_metric_local('apoz', maps))


# -- tokens (linear layers) --------------------------------------------------
class _Tokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 12)
        self.b = nn.Linear(12, 5)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_tokens_are_pooled_over_positions():
    torch.manual_seed(0)
    p = ChannelPruner(_Tokens().eval(), example_inputs=torch.randn(2, 7, 6))
    x = torch.randn(9, 7, 6)
    y = torch.tensor([0, 1, 1, 2, 0, 2, 2, 1, 0])
    with torch.no_grad():
        tokens = torch.relu(p.model.a(x))                  # (N, L, C)
    pooled = tokens.mean(1)
    _assert_scores_equal(p.get_metric_local('cdp', {'a': tokens}),
                         p.get_metric_local('cdp', {'a': pooled}))
    # The collector reads the channel axis of linear tokens too.
    col = _collector(p.graph, x, y, stats=('pooled', 'zeros'), by='class',
                     num_classes=3)
    _assert_scores_equal(p.get_metric_local('cdp', {'a': tokens, 'labels': y}),
                         p.get_metric_local('cdp', col.documents()))
    zf = statistic_contents('zeros', p.graph, p.model, {'a': tokens}, 'apoz')
    torch.testing.assert_close(zf['a'], col.zero_fraction()['a'], **TOL)
    torch.testing.assert_close(zf['a'], (tokens == 0).float().mean((0, 1)))
    with pytest.raises(ValueError, match=r"layer 'a'.*\(N, 12\) or "
                       r'\(N, L, 12\)'):
        p.get_metric_local('cdp', {'a': tokens.transpose(1, 2)})
    with pytest.raises(ValueError, match=r"hrank: layer 'a'.*"
                       r'\(12,\) mean rank, or \(N, H, W, 12\)'):
        p.get_metric_local('hrank', {'a': tokens})


# -- bad input ---------------------------------------------------------------
@pytest.mark.parametrize('shape', [(4, 16, 28), (4, 16, 2, 28, 28),
                                   (4, 28, 28, 16), (4, 8, 28, 28), (16,)])
@pytest.mark.parametrize('metric', ['cdp', 'apoz', 'hrank'])
def test_wrong_layout_names_layer_and_shapes(pruner, metric, shape):
    layer = 'backbone.layer1.0.conv1'
    if metric != 'cdp' and shape == (16,):
        shape = (15,)   # (16,) is the statistic itself
    with pytest.raises(ValueError) as info:
        pruner.get_metric_local(metric, {layer: torch.rand(shape)})
    msg = str(info.value)
    assert metric in msg and repr(layer) in msg, msg
    assert str(tuple(shape)) in msg and '(N, 16, H, W)' in msg, msg


def test_bad_labels(pruner, batch):
    x, y = batch
    maps = {'backbone.conv1': _feature_maps(pruner.graph, x)['backbone.conv1']}
    with pytest.raises(ValueError, match=r"cdp: layer 'backbone.conv1'.*"
                       r'11 entries but the tensor has 12 samples'):
        pruner.get_metric_local('cdp', {**maps, 'labels': y[:11]})
    with pytest.raises(ValueError, match='integer class ids'):
        pruner.get_metric_local('cdp', {**maps, 'labels': y.float()})
    with pytest.raises(KeyError, match='cdp: unknown layers'):
        pruner.get_metric_local('cdp', {'nope': maps['backbone.conv1']})


# -- fm_reconstruction ---------------------------------------------------------
def _consumer_inputs(model, names, x):
    saved, handles = {}, []
    for n in names:
        def hook(mod, args, n=n):
            saved[n] = args[0].detach()
        handles.append(model.get_submodule(n).register_forward_pre_hook(hook))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return saved


def test_fm_gram_from_consumer_inputs(pruner, batch):
    x, _ = batch
    model, conv = pruner.model, 'backbone.layer1.0.conv2'
    inputs = _consumer_inputs(model, ['fc', conv], x)
    grams = statistic_contents('fm_gram', pruner.graph, model, inputs,
                               'fm_reconstruction')
    # fc sees one position per sample: the collector samples all of them.
    col = FMReconstructionCollector(pruner.graph, model, n_points_per_fm=1,
                                    layers=['fc'])
    col.collect([x])
    torch.testing.assert_close(grams['fc'], col.gram['fc'])
    # conv: Gram of every output position, by direct per-channel convs.
    mod = model.get_submodule(conv)
    xin = inputs[conv]
    ys = torch.stack([F.conv2d(xin[:, c:c + 1], mod.weight[:, c:c + 1],
                               stride=mod.stride, padding=mod.padding)
                      for c in range(xin.shape[1])]).double()
    want = torch.einsum('cbohw,dbohw->cd', ys, ys)
    torch.testing.assert_close(grams[conv], want, rtol=1e-5, atol=1e-6)
    _assert_scores_equal(
        pruner.get_metric_local('fm_reconstruction', inputs),
        pruner.get_metric_local('fm_reconstruction', grams))
    with pytest.raises(ValueError, match=r"fm_reconstruction: layer "
                       r"'backbone.layer1.0.conv2'.*\(16, 16\) Gram matrix"):
        pruner.get_metric_local('fm_reconstruction', {conv: xin[:, :8]})
    with pytest.raises(ValueError, match='no input channels'):
        pruner.get_metric_local('fm_reconstruction',
                                {'backbone.bn1': xin})
