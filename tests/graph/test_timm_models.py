"""timm models prune for real (issue 16): uniform 50 % L1 channel pruning
reaches <= 0.75 of the MACs, the exported model equals the masked one and
the classifier output is never pruned. Random init, smallest input the
model accepts (ViTs are built for it with ``img_size``)."""
import pytest
import torch

from helpers.models import prune_half, randomise
from mmrazor_ext.pruners import ChannelPruner
from mmrazor_ext.utils import perturb_parameters

timm = pytest.importorskip('timm')

CASES = [('regnetx_002', 32, {}), ('efficientnet_b0', 32, {}),
         ('mobilenetv3_large_100', 32, {}), ('densenet121', 32, {}),
         ('repvgg_a0', 32, {}),
         ('deit_tiny_patch16_224', 32, {'img_size': 32})]


@pytest.mark.slow
@pytest.mark.parametrize('name,size,kwargs', CASES,
                         ids=[c[0] for c in CASES])
def test_timm_model_prunes_and_exports(name, size, kwargs):
    torch.manual_seed(0)
    model = randomise(timm.create_model(name, pretrained=False,
                                        num_classes=10, **kwargs))
    x = torch.randn(1, 3, size, size)
    pruner, small, ratio = prune_half(model, x)
    with torch.no_grad():
        assert small(x).shape == (1, 10)
    assert ratio <= 0.75, (name, ratio)
    # the classifier keeps its outputs: the report says why
    head = [r for r in pruner.report(log=False) if r.channels == 10]
    assert head and head[0].reason.startswith('output layer')


@pytest.mark.slow
def test_vit_attention_is_kept_whole_mlp_is_pruned():
    """Heads are never broken: qkv / proj channels stay (the attention op
    pins them), the MLP hidden dim is what is pruned."""
    torch.manual_seed(0)
    model = timm.create_model('deit_tiny_patch16_224', pretrained=False,
                              num_classes=10, img_size=32, depth=2).eval()
    pruner = ChannelPruner(model, torch.randn(1, 3, 32, 32))
    members = {layer for sp in pruner.channel_spaces.values()
               for layer, role in sp.members if role == 'out'}
    assert {'blocks.0.mlp.fc1', 'blocks.1.mlp.fc1'} <= members
    assert not any('attn.qkv' in m for m in members)
    pruner.set_subnet(pruner.sample_subnet_uniform(
        0.5, pruner.get_metric_local('l1')))
    small = pruner.export()
    attn = small.blocks[0].attn
    assert attn.qkv.out_features == 3 * 192 and attn.num_heads == 3
    assert small.blocks[0].mlp.fc1.out_features < 768


@pytest.mark.slow
def test_timm_norm_layers_with_activation():
    """timm's norm + act layers: channels follow the norm, the activation
    inside is kept (masked == exported), LayerNorm2d / GroupNorm1 normalise
    over the kept channels only."""
    from timm.layers import BatchNormAct2d, GroupNorm1, LayerNorm2d

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = torch.nn.Conv2d(3, 16, 3)
            self.n1 = BatchNormAct2d(16, act_layer=torch.nn.Hardswish)
            self.c2 = torch.nn.Conv2d(16, 16, 3)
            self.n2 = LayerNorm2d(16)
            self.c3 = torch.nn.Conv2d(16, 16, 1)
            self.n3 = GroupNorm1(16)
            self.fc = torch.nn.Linear(16, 4)

        def forward(self, x):
            x = self.n2(self.c2(self.n1(self.c1(x))))
            x = self.n3(self.c3(x))
            return self.fc(x.mean((2, 3)))

    torch.manual_seed(0)
    net = randomise(Net())
    with torch.no_grad():
        for m in (net.n2, net.n3):
            m.weight.normal_()
            m.bias.normal_()
    pruner = ChannelPruner(net, torch.randn(1, 3, 12, 12))
    assert set(pruner.channel_spaces) == {'c1', 'c2', 'c3'}
    pruner.set_subnet(pruner.sample_subnet_uniform(
        0.5, pruner.get_metric_local('l1')))
    small = pruner.export()
    assert pruner.last_export_report['ok']
    assert small.n1.running_mean.numel() == 8
    assert isinstance(small.n1.act, torch.nn.Hardswish)
    assert small.n2.normalized_shape == (8,)
    assert small.n3.num_channels == 8 and small.n3.num_groups == 1


# families fixed for issue 16 (timm ops without rules, pinned families,
# size-dependent control flow): (name, input size, constructor kwargs)
MORE_CASES = [('resmlp_12_224', 32, {'img_size': 32}),
              ('edgenext_xx_small', 64, {'depths': (1, 1, 2, 1)}),
              ('levit_128s', 64, {'img_size': 64}),
              ('poolformerv2_s12', 32, {}),
              ('hgnetv2_b0', 32, {}),
              ('mobilevit_xxs', 64, {}),
              ('vgg11', 32, {'mlp_ratio': 0.0625})]


@pytest.mark.slow
@pytest.mark.parametrize('name,size,kwargs', MORE_CASES,
                         ids=[c[0] for c in MORE_CASES])
def test_more_timm_families_prune_and_export(name, size, kwargs):
    # VGG / MobileViT are traced through their views (graph/timm_views);
    # traceable_view registers them on first use, in the pruner and in the
    # FLOPs counter alike
    torch.manual_seed(0)
    model = perturb_parameters(randomise(timm.create_model(
        name, pretrained=False, num_classes=10, **kwargs)))
    x = torch.randn(1, 3, size, size)
    _, small, ratio = prune_half(model, x)
    assert type(small) is type(model)
    with torch.no_grad():
        assert small(x).shape == (1, 10)
    assert ratio <= 0.75, (name, ratio)


@pytest.mark.slow
def test_levit_attention_heads_are_kept_whole():
    """LeViT: ``LinearNorm``'s ``reshape_as`` follows pruning (its MLP and
    residual stream are pruned), the qkv split into heads pins qkv."""
    torch.manual_seed(0)
    model = timm.create_model('levit_128s', pretrained=False, num_classes=10,
                              img_size=64).eval()
    pruner = ChannelPruner(model, torch.randn(1, 3, 64, 64))
    members = {layer for sp in pruner.channel_spaces.values()
               for layer, role in sp.members if role == 'out'}
    assert 'stages.0.blocks.0.mlp.ln1.linear' in members
    assert 'stages.0.blocks.0.attn.proj.ln.linear' in members
    assert not any('attn.qkv' in m for m in members)
    pruner.set_subnet(pruner.sample_subnet_uniform(
        0.5, pruner.get_metric_local('l1')))
    attn = pruner.export().stages[0].blocks[0].attn
    assert attn.qkv.linear.out_features == model.stages[0].blocks[0].attn \
        .qkv.linear.out_features
