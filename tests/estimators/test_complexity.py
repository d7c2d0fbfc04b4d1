"""FLOPs / params counting (estimators/complexity.py)."""
import torch
import torchvision
from torch import nn

from mmrazor_ext.estimators import get_model_complexity
from mmrazor_ext.models import CifarResNet


def test_resnet50_224_flops_in_reference_range():
    res = get_model_complexity(torchvision.models.resnet50(),
                               torch.randn(1, 3, 224, 224))
    assert 4.09e9 <= res['flops'] <= 4.13e9, res
    assert res['params'] == 25_557_032


def test_resnet56_cifar_flops():
    res = get_model_complexity(CifarResNet(56), torch.randn(1, 3, 32, 32),
                               per_layer=True)
    assert 124e6 <= res['flops'] <= 127.5e6, res['flops']  # ~125 M MACs
    layers = res['layers']
    assert layers['backbone.conv1'] == {'flops': 16 * 27 * 32 * 32,
                                        'params': 16 * 27,
                                        'type': 'Conv2d'}
    assert layers['fc']['flops'] == 640
    assert sum(e['flops'] for e in layers.values()) == res['flops']


class _Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.q = nn.Linear(8, 8)

    def forward(self, x):
        y = self.dw(x).flatten(2).transpose(1, 2)  # (N, L, C)
        q = self.q(y)
        return torch.matmul(q, y.transpose(1, 2))


def test_grouped_conv_linear_and_matmul_counted():
    res = get_model_complexity(_Attn(), torch.randn(1, 8, 4, 4),
                               per_layer=True)
    dw = 8 * 16 * 9  # depthwise: out elements x 9
    lin = 16 * 8 * 8
    mm = 16 * 16 * 8
    assert res['flops'] == dw + lin + mm
    assert any(e['type'] == 'matmul' for e in res['layers'].values())


def test_mha_module_counted():
    mha = nn.MultiheadAttention(16, 2, batch_first=True)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = mha

        def forward(self, x):
            return self.mha(x, x, x)[0]
    res = get_model_complexity(M(), torch.randn(1, 5, 16))
    # 4 projections + QK^T + AV
    assert res['flops'] == 4 * 5 * 16 * 16 + 2 * 5 * 5 * 16


def test_swin_t_window_attention_counted():
    # torchvision documents 4.49 GFLOPs (MACs) for swin_t at 224
    res = get_model_complexity(torchvision.models.swin_t(),
                               torch.randn(1, 3, 224, 224))
    assert 4.45e9 <= res['flops'] <= 4.53e9, res


def test_einsum_counted():
    class M(nn.Module):
        def forward(self, a, b):
            return torch.einsum('bij,bjk->bik', a, b)
    res = get_model_complexity(M(), (torch.randn(2, 3, 4),
                                     torch.randn(2, 4, 5)))
    assert res['flops'] == 2 * 3 * 4 * 5
