"""The offline datasets: clear errors when missing, the prepared
Fashion-MNIST layout (datasets/offline.py)."""
import pytest

from helpers.data import make_fmnist


def test_datasets_fail_clearly_when_missing(tmp_path):
    from mmrazor_ext.datasets import (
        CIFAR10,
        DatasetNotFoundError,
        FashionMNIST,
        ImageNet,
    )
    with pytest.raises(DatasetNotFoundError, match='make data'):
        FashionMNIST(data_root=str(tmp_path), split='train')
    with pytest.raises(DatasetNotFoundError,
                       match=r'CIFAR10 dataset not found at .*See README'):
        CIFAR10(data_root=str(tmp_path / 'cifar10'), split='train')
    with pytest.raises(DatasetNotFoundError, match='ImageNet dataset not found'):
        ImageNet(data_root=str(tmp_path / 'imagenet'), split='val')


def test_fashion_mnist_reads_prepared_layout(tmp_path):
    from mmrazor_ext.datasets import FashionMNIST
    root = make_fmnist(str(tmp_path / 'fm'), n_train=20, n_test=7)
    train = FashionMNIST(data_root=root, split='train', pipeline=[])
    test = FashionMNIST(data_root=root, split='test', pipeline=[])
    assert len(train) == 20 and len(test) == 7
    assert train[0]['img'].shape == (28, 28)
    assert 'T-shirt/top' in train.metainfo['classes'][0]
