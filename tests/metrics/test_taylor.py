"""The Taylor metric accumulates over batches (metrics/taylor.py)."""
import pytest
import torch

from helpers.data import random_batches
from helpers.models import check_scores, resnet20_pruner
from mmrazor_ext.metrics import TaylorAccumulator


@pytest.fixture(scope='module')
def pruner():
    return resnet20_pruner()


def test_taylor_accumulates_over_batches(pruner):
    model = pruner.model
    loss_fn = lambda b: torch.nn.functional.cross_entropy(  # noqa: E731
        model(b[0]), b[1])
    batches = random_batches(2, (8, 1, 28, 28))
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
    check_scores(pruner, pruner.get_metric_local('taylor', total))
