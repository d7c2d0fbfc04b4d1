"""BN recalibration and batch unpacking outside classification: a model
that keeps its BNs in eval mode while training (mmdet's ``norm_eval``)
still gets re-estimated statistics, and detection batches (no class
labels) unpack to ``labels=None`` instead of failing on ``gt_label``."""
import pytest
import torch
from mmengine.model import BaseModel
from mmengine.structures import BaseDataElement
from torch import nn

from mmrazor_ext.utils.evaluation import (
    evaluate_top1,
    recalibrate_bn,
    to_tensors,
)


class NormEvalNet(BaseModel):
    """conv -> BN; ``train()`` puts the BN back in eval (norm_eval)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def train(self, mode=True):
        super().train(mode)
        self.bn.eval()
        return self

    def forward(self, inputs, data_samples=None, mode='tensor'):
        return self.bn(self.conv(inputs)).mean((2, 3))


def _batches(n, labelled):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        samples = []
        for _ in range(2):
            s = BaseDataElement()
            if labelled:
                s.gt_label = torch.tensor([1])
            else:
                s.gt_instances = BaseDataElement(bboxes=torch.rand(1, 4))
            samples.append(s)
        out.append(dict(inputs=torch.randn(2, 3, 8, 8, generator=g) * 3 + 2,
                        data_samples=samples))
    return out


def test_recalibration_updates_bns_kept_in_eval_by_the_model():
    net = NormEvalNet().train()
    assert not net.bn.training
    assert recalibrate_bn(net, _batches(3, labelled=False), 3) == 3
    # re-estimated from the data, not left at the reset values (0 / 1)
    assert net.bn.num_batches_tracked.item() == 3
    assert not torch.allclose(net.bn.running_mean, torch.zeros(4))
    assert not torch.allclose(net.bn.running_var, torch.ones(4))
    # the model's own mode rules are back
    assert net.training and not net.bn.training


def test_detection_batches_unpack_without_labels():
    net = NormEvalNet()
    inputs, labels = to_tensors(net, _batches(1, labelled=False)[0])
    assert inputs.shape == (2, 3, 8, 8) and labels is None
    _, labels = to_tensors(net, _batches(1, labelled=True)[0])
    assert labels.tolist() == [1, 1]
    with pytest.raises(ValueError, match='no class labels'):
        evaluate_top1(net, _batches(1, labelled=False))
