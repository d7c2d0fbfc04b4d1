"""Saved subnets are untrusted input: every malformed file gives a named
error (file and field) before anything is built or written; empty models
are refused by name."""
import json
import shutil

import pytest
import torch
from torch import nn

from helpers import tree
from helpers.models import randomise
from mmrazor_ext.estimators import get_model_complexity
from mmrazor_ext.models import CifarResNet
from mmrazor_ext.pruners import ChannelPruner, SubnetFileError, load_subnet

X = torch.randn(1, 3, 32, 32)


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
    """A saved ResNet-20 subnet with weights: (folder, first space name)."""
    folder = tmp_path_factory.mktemp('saved')
    torch.manual_seed(0)
    pruner = ChannelPruner(randomise(CifarResNet(20)), X)
    pruner.set_subnet(pruner.sample_subnet_uniform(0.5))
    pruner.save_subnet(str(folder / 'subnet.json'))
    return folder, next(iter(pruner.channel_spaces))


@pytest.fixture
def subnet_file(saved, tmp_path):
    """Copy of the saved files in ``tmp_path/run``; returns (path, data,
    space) where writing ``data`` back is up to the test."""
    src, space = saved
    run = tmp_path / 'run'
    shutil.copytree(src, run)
    path = run / 'subnet.json'
    return path, json.loads(path.read_text()), space


def _fails(path, match, **kw):
    """load_subnet raises a ValueError matching ``match`` that names the
    file, and writes nothing."""
    before = tree(path.parent.parent)
    with pytest.raises(ValueError, match=match) as err:
        load_subnet(CifarResNet(20), str(path), **kw)
    assert str(path) in str(err.value)
    assert tree(path.parent.parent) == before
    return err.value


@pytest.mark.parametrize('kept,why', [
    ([-1, 0], 'index -1 is out of range'),
    ([0.5, 1.0], '0.5 is not an integer'),
    ([99999], 'index 99999 is out of range'),
    ([0, 3, 3], 'index 3 appears twice'),
    ([], 'is empty'),
    ([True], 'True is not an integer'),
])
def test_bad_kept_indices_name_space_and_file(subnet_file, kept, why):
    path, data, space = subnet_file
    data['spaces'][space]['kept'] = kept
    path.write_text(json.dumps(data))
    err = _fails(path, why)
    assert isinstance(err, SubnetFileError)
    assert f"spaces['{space}']['kept']" in str(err)


def test_missing_fields_are_named(subnet_file):
    path, data, space = subnet_file
    del data['spaces'][space]['kept']
    path.write_text(json.dumps(data))
    _fails(path, f"spaces\\['{space}'\\] has no 'kept' field")
    del data['spaces']
    path.write_text(json.dumps(data))
    _fails(path, "the file has no 'spaces' field")
    data['spaces'] = {space: {'kept': [0], 'num_channels': '16'}}
    path.write_text(json.dumps(data))
    _fails(path, "'num_channels'\\] must be int")


def test_truncated_or_foreign_json(subnet_file):
    path, data, _ = subnet_file
    text = json.dumps(data)
    path.write_text(text[:len(text) // 2])
    err = _fails(path, 'not a valid JSON file.*truncated')
    assert not isinstance(err, json.JSONDecodeError)
    path.write_text(json.dumps({'format': 'something.else'}))
    _fails(path, 'not a saved subnet')
    path.write_text(json.dumps(dict(data, version=99)))
    _fails(path, 'version 99')


def test_version_2_channel_structure_reads_depth_steps_refused(subnet_file):
    path, data, _ = subnet_file
    v2 = dict(data, version=2, bn_folded=False, meta={'algorithm': 'x'})
    path.write_text(json.dumps(v2))
    small = load_subnet(CifarResNet(20), str(path))
    assert sum(p.numel() for p in small.parameters()) < \
        sum(p.numel() for p in CifarResNet(20).parameters())
    path.write_text(json.dumps(dict(v2, removal_mode='identity',
                                    removed_blocks=['backbone.layer1.1'])))
    _fails(path, 'removes / merges blocks.*load_pruned_model')


def test_bad_example_inputs_and_ignore_layers(subnet_file):
    path, data, _ = subnet_file
    bad = dict(data, example_inputs=[{'shape': [1, 3, 32, 32],
                                      'dtype': 'torch.load'}])
    path.write_text(json.dumps(bad))
    _fails(path, "example_inputs\\[0\\]\\['dtype'\\].*not a torch dtype")
    path.write_text(json.dumps(dict(data, ignore_layers='fc')))
    _fails(path, 'ignore_layers')


@pytest.mark.parametrize('weights', ['/etc/passwd', '../outside.pth',
                                     'sub/../../outside.pth'])
def test_weights_outside_the_folder_need_an_explicit_path(subnet_file,
                                                          weights):
    path, data, _ = subnet_file
    outside = path.parent.parent / 'outside.pth'
    shutil.copy(path.parent / 'subnet.pth', outside)
    path.write_text(json.dumps(dict(data, weights=weights)))
    _fails(path, "'weights'.*not inside the file's folder.*weights=")
    # the caller may name any file explicitly
    small = load_subnet(CifarResNet(20), str(path), weights=str(outside))
    ref = load_subnet(CifarResNet(20), str(path),
                      weights=str(path.parent / 'subnet.pth'))
    for a, b in zip(small.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)


def test_weights_go_through_the_safe_loader(subnet_file, monkeypatch):
    from mmrazor_ext.engine import checkpoint
    path, _, _ = subnet_file
    calls = []
    real = checkpoint.safe_load

    def spy(filename, *args, **kwargs):
        calls.append(filename)
        return real(filename, *args, **kwargs)
    monkeypatch.setattr(checkpoint, 'safe_load', spy)
    load_subnet(CifarResNet(20), str(path))
    assert calls == [str(path.parent / 'subnet.pth')]


def test_set_subnet_rejects_bad_indices():
    pruner = ChannelPruner(CifarResNet(20), X)
    name, space = next(iter(pruner.channel_spaces.items()))
    for bad in ([-1, 0], [space.num_channels]):
        with pytest.raises(ValueError, match=f'{name}.*in \\[0, '):
            pruner.set_subnet({name: torch.tensor(bad)})
    with pytest.raises(ValueError, match='float32'):
        pruner.set_subnet({name: torch.tensor([0.5, 1.0])})
    assert pruner.subnet is None


class _OnlyFreeTensor(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3, 1, 1))

    def forward(self, x):
        return x * self.scale


@pytest.mark.parametrize('model,why', [
    (nn.Sequential(), 'Sequential is empty: it has no parameters'),
    (nn.ReLU(), 'ReLU is empty'),
    (_OnlyFreeTensor(), '_OnlyFreeTensor has no prunable layers'),
])
def test_empty_model_is_named_not_zero_division(model, why, tmp_path,
                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=why):
        ChannelPruner(model, X)
    assert tree(tmp_path) == []


def test_complexity_of_empty_model_and_macs_key():
    for model in (nn.Sequential(), nn.Identity(), nn.ReLU()):
        with pytest.raises(ValueError, match=f'{type(model).__name__} is '
                           'empty'):
            get_model_complexity(model, X)
    res = get_model_complexity(CifarResNet(20), X)
    assert res['macs'] == res['flops'] > 0
