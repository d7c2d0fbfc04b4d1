"""tools/analysis/get_flops.py on a config."""
import torch

from mmrazor_ext.estimators import get_model_complexity
from mmrazor_ext.models import CifarResNet


def test_get_flops_tool_on_config(tmp_path, capsys):
    cfg = tmp_path / 'tiny.py'
    cfg.write_text(
        "model = dict(type='mmpretrain.ImageClassifier',\n"
        "    backbone=dict(type='ResNet_CIFAR', depth=20, in_channels=1),\n"
        "    neck=dict(type='mmpretrain.GlobalAveragePooling'),\n"
        "    head=dict(type='mmpretrain.LinearClsHead', num_classes=10,\n"
        "        in_channels=64,\n"
        "        loss=dict(type='mmpretrain.CrossEntropyLoss')))\n")
    from tools.analysis import get_flops
    assert get_flops.main([str(cfg), '--shape', '28', '28']) == 0
    out = capsys.readouterr().out
    assert 'backbone.layer1.0.conv1' in out and 'head.fc' in out
    assert 'Input shape: (1, 1, 28, 28)' in out
    total = get_model_complexity(CifarResNet(20, in_channels=1),
                                 torch.randn(1, 1, 28, 28))['flops']
    assert f'({total:,d})' in out
