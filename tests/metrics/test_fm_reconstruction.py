"""The feature-map reconstruction metric (metrics/fm_reconstruction.py)."""
import pytest
import torch

from helpers.data import random_batches
from helpers.models import check_scores, resnet20_pruner


@pytest.fixture(scope='module')
def pruner():
    return resnet20_pruner()


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
    grams = col.collect([x for x, _ in random_batches(2, (4, 1, 28, 28))])
    assert 'fc' in grams  # the classifier consumes the last space
    for g in grams.values():
        torch.testing.assert_close(g, g.t())
        assert (g.diagonal() >= 0).all()
    check_scores(pruner, pruner.get_metric_local('fm_reconstruction', grams))


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
