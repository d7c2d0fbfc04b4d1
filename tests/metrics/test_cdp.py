"""The CDP metric: the formula by hand and scores from collected
features (metrics/cdp.py)."""
import math

import pytest
import torch

from helpers.data import random_batches
from helpers.models import check_scores, resnet20_pruner
from mmrazor_ext.metrics import FeatureCollector, cdp_scores


@pytest.fixture(scope='module')
def pruner():
    return resnet20_pruner()


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


@pytest.mark.parametrize('by', ['class', 'sample'])
def test_cdp_from_collected_features(pruner, by):
    col = FeatureCollector(pruner.graph, stats=('pooled',), by=by,
                           num_classes=10)
    batches = random_batches(3)
    for x, y in batches:
        col.update(x, y)
    docs = col.documents()
    n_docs = len(torch.cat([y for _, y in batches]).unique()) \
        if by == 'class' else 24
    assert all(d.shape[0] == n_docs for d in docs.values())
    scores = pruner.get_metric_local('cdp', docs)
    check_scores(pruner, scores)
    # Deterministic: a second collection gives the same scores.
    col2 = FeatureCollector(pruner.graph, stats=('pooled',), by=by,
                            num_classes=10)
    for x, y in batches:
        col2.update(x, y)
    again = pruner.get_metric_local('cdp', col2.documents())
    for k in scores:
        torch.testing.assert_close(scores[k], again[k])
