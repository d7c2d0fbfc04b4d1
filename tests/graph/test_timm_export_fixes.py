"""Export fixes found by the timm coverage run (issue 16).

* A channel space spanning a concat (CSP / ESE gate, dense and inception
  blocks) could drop every unit of one concat input: its conv was left with
  zero output channels and the export failed ("kept channels vary along
  dims []" on its BN). The global mask now keeps one unit per producer.
* visformer's exported model differed from the masked one in float32 only:
  the equivalence check repeats a failed float32 comparison in float64,
  where a wrong slice still fails and rounding noise does not.
"""
import copy

import pytest
import torch
from torch import nn

from helpers.models import randomise
from mmrazor_ext.estimators import get_model_complexity
from mmrazor_ext.graph import check_equivalence
from mmrazor_ext.pruners import ChannelPruner


class CatGate(nn.Module):
    """CSPNeXt-like: ``cat([short, main])`` gated by an ESE conv whose
    output multiplies the concat, so both concat inputs share one space."""

    def __init__(self):
        super().__init__()
        self.short = nn.Conv2d(3, 4, 1)
        self.short_bn = nn.BatchNorm2d(4)
        self.main = nn.Conv2d(3, 4, 1)
        self.main_bn = nn.BatchNorm2d(4)
        self.fc = nn.Conv2d(8, 8, 1)
        self.final = nn.Conv2d(8, 5, 1)

    def forward(self, x):
        y = torch.cat([self.short_bn(self.short(x)),
                       self.main_bn(self.main(x))], 1)
        y = y * torch.sigmoid(self.fc(y.mean((2, 3), keepdim=True)))
        return self.final(y)


def _short_space(pruner):
    return next(name for name, sp in pruner.channel_spaces.items()
                if ('short', 'out') in sp.members)


def test_concat_input_with_every_unit_dropped_keeps_one_channel():
    torch.manual_seed(0)
    model = randomise(CatGate())
    x = torch.randn(2, 3, 8, 8)
    pruner = ChannelPruner(model, x)
    name = _short_space(pruner)
    space = pruner.channel_spaces[name]
    assert ('main', 'out') in space.members and space.num_channels == 8
    # units 0-3 are the short conv's: drop all of them and one of main's
    subnet = {n: torch.ones(sp.num_channels, dtype=torch.bool)
              for n, sp in pruner.channel_spaces.items()}
    subnet[name] = torch.tensor([0, 0, 0, 0, 1, 1, 1, 0], dtype=torch.bool)
    pruner.set_subnet(subnet)
    # the subnet and the space mask show the repair (counts agree)
    assert pruner.subnet[name].tolist() == [1, 0, 0, 0, 1, 1, 1, 0]
    assert space.out_mask.tolist() == pruner.subnet[name].tolist()
    small = pruner.export()  # raised before: a conv with 0 output channels
    assert pruner.last_export_report['rel_diff'] <= 1e-5
    assert small.short.out_channels == 1  # the first unit re-enabled
    assert small.main.out_channels == 3
    assert small.fc.in_channels == small.fc.out_channels == 4
    assert small.final.in_channels == 4
    # the masked model uses the same repaired mask as the export
    with torch.no_grad():
        assert torch.allclose(model(x), small(x), atol=1e-5)


def test_untouched_subnet_mask_is_returned_unchanged():
    torch.manual_seed(0)
    pruner = ChannelPruner(randomise(CatGate()), torch.randn(1, 3, 8, 8))
    name = _short_space(pruner)
    subnet = {name: torch.tensor([1, 0, 0, 0, 1, 1, 0, 0], dtype=torch.bool)}
    gmask = pruner.graph.global_mask(subnet)
    assert gmask[:8].tolist() == subnet[name].tolist()


class Cancel(nn.Module):
    """Float32 rounding amplified by cancellation: ``(y + 1e6) - 1e6``."""

    def __init__(self, shift=1e6, bias=0.0):
        super().__init__()
        self.fc = nn.Linear(16, 4)
        self.shift, self.bias = shift, bias

    def forward(self, x):
        return (self.fc(x) + self.shift) - self.shift + self.bias


def test_float32_noise_passes_on_the_float64_recheck():
    torch.manual_seed(0)
    ref, cand = Cancel(), Cancel(shift=0.0)
    cand.load_state_dict(ref.state_dict())
    x = torch.randn(8, 16)
    plain = check_equivalence(ref, cand, (x,), recheck_float64=False)
    assert not plain['ok'] and plain['rel_diff'] > 1e-3  # float32 noise
    rep = check_equivalence(ref, cand, (x,))
    assert rep['ok'] and rep['float64_rel_diff'] < 1e-8
    assert rep['rel_diff'] == plain['rel_diff']  # float32 numbers reported
    assert ref.fc.weight.dtype == torch.float32  # the models are untouched


def test_real_mismatch_still_fails_in_float64():
    torch.manual_seed(0)
    ref, cand = Cancel(), Cancel(shift=0.0, bias=0.01)
    cand.load_state_dict(ref.state_dict())
    rep = check_equivalence(ref, cand, (torch.randn(8, 16),))
    assert not rep['ok'] and rep['float64_rel_diff'] > 1e-3


# -- timm models -----------------------------------------------------------------
timm_cases = [('cspnext_tiny', 64, {}), ('rdnet_tiny', 64, {}),
              ('inception_resnet_v2', 128, {}),
              ('visformer_tiny', 64, {'img_size': 64})]


@pytest.mark.slow
@pytest.mark.parametrize('name,size,kwargs', timm_cases)
def test_timm_models_prune_and_export(name, size, kwargs):
    timm = pytest.importorskip('timm')
    torch.manual_seed(0)
    model = randomise(timm.create_model(name, pretrained=False,
                                        num_classes=1000, **kwargs))
    x = torch.randn(1, 3, size, size)
    pruner = ChannelPruner(model, x)
    pruner.set_subnet(pruner.sample_subnet_uniform(
        0.5, pruner.get_metric_local('l1')))
    small = pruner.export()
    rep = pruner.last_export_report
    assert rep['ok'], (name, rep)
    # in float64 the slicing must be exact (float32 noise gone): a wrong
    # slice of a near-zero channel could hide inside the float32 tolerance
    rep64 = check_equivalence(copy.deepcopy(model).double(),
                              copy.deepcopy(small).double(), (x.double(),))
    assert rep64['rel_diff'] <= 1e-9, (name, rep64)
    ratio = get_model_complexity(small, x)['flops'] / \
        get_model_complexity(model, x)['flops']
    assert ratio <= 0.75, (name, ratio)


def test_an_all_zero_output_makes_the_export_check_vacuous(monkeypatch):
    """A zero-initialised head outputs zeros whatever the slices: the check
    says so (report and warning) instead of passing silently."""
    import mmrazor_ext.pruners.channel_pruner as cp
    from mmrazor_ext.pruners import ChannelPruner
    from mmrazor_ext.utils import perturb_parameters

    def net():
        torch.manual_seed(0)
        m = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(),
                          nn.Conv2d(16, 16, 3), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(16, 4))
        nn.init.zeros_(m[6].weight)
        nn.init.zeros_(m[6].bias)
        return m.eval()

    logged = []
    monkeypatch.setattr(cp, 'print_log',
                        lambda msg, **kw: logged.append(msg))
    for model, vacuous in ((net(), True), (perturb_parameters(net()), False)):
        logged.clear()
        pruner = ChannelPruner(model, torch.randn(1, 3, 8, 8))
        pruner.set_subnet(pruner.sample_subnet_uniform(
            0.5, pruner.get_metric_local('l1')))
        pruner.export()
        assert pruner.last_export_report['vacuous'] is vacuous
        assert any('cannot detect' in m for m in logged) is vacuous
