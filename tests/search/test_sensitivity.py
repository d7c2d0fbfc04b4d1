"""Sensitivity-aware allocation of a MACs target (search/sensitivity.py)."""
import pytest
import torch
from torch import nn

from mmrazor_ext.pruners import ChannelPruner
from mmrazor_ext.search.sensitivity import (
    allocate_by_sensitivity,
    check_sensitivity,
)


class TwoSpaces(nn.Module):
    """conv_a (space A) -> conv_b (space B) -> pool -> fc. Only channels 0
    and 1 of B reach the logits with real weights, while every channel of A
    feeds them: B is cheap to prune, A is not."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv_a = nn.Conv2d(8, 16, 1, bias=False)
        self.bn_a = nn.BatchNorm2d(16)
        self.conv_b = nn.Conv2d(16, 16, 1, bias=False)
        self.bn_b = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 4)
        with torch.no_grad():
            self.conv_a.weight.copy_(torch.randn(16, 8, 1, 1, generator=g))
            self.conv_b.weight.copy_(torch.randn(16, 16, 1, 1, generator=g))
            w = torch.randn(4, 16, generator=g) * 1e-3
            w[:, :2] = torch.randn(4, 2, generator=g) * 4
            self.fc.weight.copy_(w)
            self.fc.bias.zero_()

    def forward(self, x):
        x = torch.relu(self.bn_a(self.conv_a(x)))
        x = torch.relu(self.bn_b(self.conv_b(x)))
        return self.fc(x.mean((2, 3)))


def _setup():
    torch.manual_seed(0)
    model = TwoSpaces()
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(32, 8, 4, 4, generator=g) for _ in range(4)]
    model.train()
    with torch.no_grad():  # BN statistics of the data
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = None
        for x in xs:
            model(x)
    model.eval()
    with torch.no_grad():  # labels: the dense model's own predictions
        batches = [(x, model(x).argmax(1)) for x in xs]
    pruner = ChannelPruner(model, torch.randn(1, 8, 4, 4))
    return model, pruner, batches


def _spaces(pruner):
    assert set(pruner.channel_spaces) == {'conv_a', 'conv_b'}
    return 'conv_a', 'conv_b'


def test_reaches_target_deterministically_and_spares_the_sensitive_space():
    model, pruner, batches = _setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = dict(step=0.125, bn_batches=2, eval_batches=2, progress=False)
    sub1, rep1 = allocate_by_sensitivity(pruner, None, 0.5, batches, **cfg)
    sub2, rep2 = allocate_by_sensitivity(pruner, None, 0.5, batches, **cfg)
    for k in sub1:
        assert torch.equal(sub1[k], sub2[k]), k
    assert rep1['keep_ratios'] == rep2['keep_ratios']
    ratio = pruner.estimate_flops(sub1) / pruner.original_flops
    assert 0.5 - 0.07 <= ratio <= 0.5 + 1e-9
    assert rep1['flops_ratio'] == pytest.approx(ratio)
    a, b = _spaces(pruner)
    assert rep1['keep_ratios'][a] > rep1['keep_ratios'][b], rep1['keep_ratios']
    # B keeps its two important channels (the scores order B's channels)
    # and the model is left as it was (masks and BN statistics)
    assert pruner.subnet is None
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # bounded cost: about one evaluation per space plus two per step
    assert rep1['evaluations'] <= 1 + len(sub1) + 2 * rep1['steps']


def test_scores_choose_channels_and_start_subnet_stays_pruned():
    _, pruner, batches = _setup()
    a, b = _spaces(pruner)
    scores = {a: torch.arange(16.), b: torch.arange(16.).flip(0)}
    start = {b: torch.arange(16) != 0}   # channel 0 of B already pruned
    sub, rep = allocate_by_sensitivity(
        pruner, scores, 0.6, batches, start=start, step=4, bn_batches=1,
        eval_batches=1, progress=False, objective='top1')
    assert not bool(sub[b][0])
    k = int(sub[a].sum())
    # the highest scores of A are kept
    assert sub[a].nonzero().reshape(-1).tolist() == list(range(16 - k, 16))
    assert pruner.estimate_flops(sub) <= 0.6 * pruner.original_flops


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match='sensitivity.step'):
        check_sensitivity(dict(step=0))
    with pytest.raises(ValueError, match='sensitivity.eval_batches'):
        check_sensitivity(dict(eval_batches=0))
    with pytest.raises(ValueError, match='unknown keys'):
        check_sensitivity(dict(steps=0.1))
    with pytest.raises(ValueError, match='sensitivity.objective'):
        check_sensitivity(dict(objective='acc'))
    _, pruner, batches = _setup()
    with pytest.raises(ValueError, match='training batches'):
        allocate_by_sensitivity(pruner, None, 0.5, batches[:1],
                                bn_batches=2, eval_batches=2)
