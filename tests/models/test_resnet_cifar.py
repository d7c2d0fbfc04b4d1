"""ResNet_CIFAR: depths, parameter counts, mmpretrain integration."""
import pytest
import torch
from mmengine.registry import DefaultScope

from mmrazor_ext.models import CIFAR_DEPTHS, CifarResNet, ResNet_CIFAR
from mmrazor_ext.registry import MODELS, register_all_modules


def _classifier(depth, in_channels=3, num_classes=10):
    register_all_modules()
    with DefaultScope.overwrite_default_scope('mmrazor_ext'):
        return MODELS.build(dict(
            type='mmpretrain.ImageClassifier',
            backbone=dict(type='ResNet_CIFAR', depth=depth,
                          in_channels=in_channels),
            neck=dict(type='mmpretrain.GlobalAveragePooling'),
            head=dict(type='mmpretrain.LinearClsHead', num_classes=num_classes,
                      in_channels=64 if depth in CIFAR_DEPTHS else 512,
                      loss=dict(type='mmpretrain.CrossEntropyLoss'))))


def _params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize('depth,expected', [(20, 0.27e6), (56, 0.85e6)])
def test_param_counts(depth, expected):
    n = _params(_classifier(depth))
    # He et al. report 0.27 M / 0.85 M; our 1x1-conv shortcuts add < 0.7 %.
    assert abs(n - expected) / expected < 0.01, n
    assert n == _params(CifarResNet(depth, 10, 3))


@pytest.mark.parametrize('depth', CIFAR_DEPTHS[:-1])
def test_cifar_depths_layout(depth):
    backbone = ResNet_CIFAR(depth, in_channels=1)
    n = (depth - 2) // 6
    assert [len(getattr(backbone, f'layer{i}')) for i in (1, 2, 3)] == [n] * 3
    assert backbone.conv1.weight.shape == (16, 1, 3, 3)
    out = backbone(torch.randn(2, 1, 28, 28))
    assert out[-1].shape == (2, 64, 7, 7)
    # 3x(2n) convs in blocks + stem + fc = depth layers with weights.
    convs = [m for m in backbone.modules() if isinstance(m, torch.nn.Conv2d)
             and m.kernel_size == (3, 3)]
    assert len(convs) + 1 == depth


def test_resnet1202_builds():
    backbone = ResNet_CIFAR(1202)
    assert len(backbone.layer3) == 200
    assert 19.3e6 < _params(backbone) < 19.5e6


@pytest.mark.parametrize('depth', [18, 34, 50, 101, 152])
def test_imagenet_depths_keep_working(depth):
    backbone = ResNet_CIFAR(depth)
    assert backbone.num_stages == 4
    if depth <= 50:
        out = backbone(torch.randn(1, 3, 32, 32))
        assert out[-1].shape[1] == (512 if depth < 50 else 2048)


def test_invalid_depth_names_value():
    with pytest.raises(KeyError, match='invalid depth 21'):
        ResNet_CIFAR(21)


def test_classifier_forward_and_loss():
    model = _classifier(20, in_channels=1)
    logits = model(torch.randn(4, 1, 28, 28), mode='tensor')
    assert logits.shape == (4, 10)


def test_cifar_resnet_loads_classifier_weights():
    clf = _classifier(20, in_channels=1)
    plain = CifarResNet(20, 10, 1)
    plain.load_state_dict(clf.state_dict())
    clf.eval()
    plain.eval()
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(plain(x), clf(x, mode='tensor'))
