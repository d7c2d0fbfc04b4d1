"""Per-layer latency table: measured once, reused from the cache, keyed by
structure / input shape / batch / threads, interpolated lookups."""
import json

import pytest
import torch
from torch import nn

from mmrazor_ext.estimators import LatencyTable
from mmrazor_ext.estimators.latency_table import LayerSpec


def _net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU(),
        nn.Conv2d(16, 8, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(8, 4)).eval()


CANDIDATES = {'0': (None, [4, 8, 12]), '3': (None, [8]),
              '5': ([8], [4]), '9': ([4], None)}


def _table(tmp_path, size=8, batch=2, **kw):
    return LatencyTable(_net(), torch.randn(1, 3, size, size), CANDIDATES,
                        with_bn={'0'}, batch=batch, repeats=1, warmup=0,
                        cache_dir=str(tmp_path), progress=False, **kw)


class _CountBuilds:
    """Counts LayerSpec.build calls (one per timed grid point)."""

    def __init__(self, monkeypatch):
        self.n = 0
        orig = LayerSpec.build

        def build(spec, ci, co):
            self.n += 1
            return orig(spec, ci, co)
        monkeypatch.setattr(LayerSpec, 'build', build)


def test_second_run_reuses_cache(tmp_path, monkeypatch):
    calls = _CountBuilds(monkeypatch)
    t1 = _table(tmp_path).build()
    # conv0: 1 x 4 out widths; dw conv3: 2 (tied); conv5: 2 x 2; fc: 2 x 1
    assert t1.num_measurements == calls.n == 4 + 2 + 4 + 2
    assert not t1.from_cache and t1.model_s > 0
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and str(files[0]) == t1.path
    calls.n = 0
    t2 = _table(tmp_path).build()
    assert t2.from_cache and t2.num_measurements == 0 and calls.n == 0
    assert t2.entries == t1.entries and t2.model_s == t1.model_s
    assert t2.dense_total() == pytest.approx(t1.dense_total())


def test_cache_key_changes_with_input_shape_batch_threads(tmp_path,
                                                          monkeypatch):
    base = _table(tmp_path).build()
    other_shape = _table(tmp_path, size=12)
    assert other_shape.key['input_shapes'] != base.key['input_shapes']
    assert other_shape.path != base.path
    other_shape.build()
    assert not other_shape.from_cache and other_shape.num_measurements > 0
    assert _table(tmp_path, batch=3).path != base.path
    threads = torch.get_num_threads()
    assert _table(tmp_path, num_threads=threads + 1).path != base.path
    assert _table(tmp_path, num_threads=1, clock='cpu').path != \
        _table(tmp_path, num_threads=1).path
    assert len(list(tmp_path.iterdir())) == 2


def test_corrupt_or_foreign_cache_is_remeasured(tmp_path):
    t1 = _table(tmp_path).build()
    with open(t1.path, 'w') as f:
        f.write('{"key": {"format": 1}, "entr')  # a killed writer
    t2 = _table(tmp_path).build()
    assert not t2.from_cache and t2.num_measurements == t1.num_measurements
    with open(t2.path) as f:
        assert json.load(f)['key'] == t2.key


def test_lookup_interpolates(tmp_path):
    t = _table(tmp_path).build()
    sig = t.layers['0'][0]
    row = t.entries[sig][0]          # in width fixed (3), outs 4, 8, 12, 16
    assert t.lookup(sig, 3, 8) == pytest.approx(row[1])
    mid = t.lookup(sig, 3, 10)
    assert min(row[1], row[2]) <= mid <= max(row[1], row[2])
    assert mid == pytest.approx((row[1] + row[2]) / 2)
    # below the first grid point: proportional
    assert t.lookup(sig, 3, 2) == pytest.approx(row[0] / 2)
    # depthwise conv: the input follows the output
    dw = t.specs[t.layers['3'][0]]
    assert dw.tied and dw.grid() == [(8, 8), (16, 16)]
    module, shape = dw.build(8, 8)
    assert module[0].groups == 8 and shape == (8, 8, 8)
    # conv0 is timed with its BN + ReLU
    assert len(t.specs[sig].build(3, 8)[0]) == 3
    assert t.total({'0': (3, 8)}) == pytest.approx(
        t.dense_total() - t.lookup(sig, 3, 16) + row[1])
    assert t.total({}) == pytest.approx(t.dense_total())


def test_bad_inputs_named(tmp_path):
    with pytest.raises(ValueError, match='layer .5.'):
        LatencyTable(_net(), torch.randn(1, 3, 8, 8), {'5': ([32], None)},
                     cache_dir=None)
    with pytest.raises(TypeError, match="layer '1'"):
        LatencyTable(_net(), torch.randn(1, 3, 8, 8), {'1': (None, None)},
                     cache_dir=None)
    with pytest.raises(ValueError, match='batch'):
        LatencyTable(_net(), torch.randn(1, 3, 8, 8), {}, batch=0,
                     cache_dir=None)
    t = LatencyTable(_net(), torch.randn(1, 3, 8, 8), CANDIDATES,
                     cache_dir=None)
    with pytest.raises(RuntimeError, match='build'):
        t.dense_total()


def test_cpu_clock_needs_one_thread(tmp_path):
    from mmrazor_ext.estimators import measure_latency
    net, x = _net(), torch.randn(2, 3, 8, 8)
    assert measure_latency(net, x, warmup=0, repeats=2, num_threads=1,
                           clock='cpu') > 0
    with pytest.raises(ValueError, match='clock'):
        measure_latency(net, x, repeats=1, num_threads=2, clock='cpu')
    with pytest.raises(ValueError, match='clock'):
        measure_latency(net, x, repeats=1, clock='tsc')
    with pytest.raises(ValueError, match='clock'):
        _table(tmp_path, num_threads=2, clock='cpu')
    t = _table(tmp_path, num_threads=1, clock='cpu').build()
    assert t.key['clock'] == 'cpu' and t.model_s > 0


def test_measure_ratio_times_both_in_turn():
    from mmrazor_ext.estimators.latency_table import measure_ratio
    torch.manual_seed(0)
    big = nn.Sequential(nn.Conv2d(8, 64, 3, padding=1),
                        nn.Conv2d(64, 64, 3, padding=1)).train()
    small = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1)).eval()
    x = (torch.randn(2, 8, 16, 16),)
    dense_s, small_s = measure_ratio(big, small, x, repeats=3,
                                     num_threads=1, clock='cpu')
    # ~70x fewer MACs: faster whatever the load
    assert 0 < small_s < dense_s
    assert big.training and not small.training  # modes restored
    with pytest.raises(ValueError, match='repeats'):
        measure_ratio(big, small, x, repeats=0)
    with pytest.raises(ValueError, match='clock'):
        measure_ratio(big, small, x, num_threads=2, clock='cpu')


def test_ratio_cache_round_trip_and_foreign_key(tmp_path):
    from mmrazor_ext.estimators.latency_table import RatioCache
    path = str(tmp_path / 'sub' / 'cal.json')
    c = RatioCache(path, {'table': 'a'})
    name = RatioCache.digest({'conv': [3, 8]})
    assert c.get(name) is None
    c.put(name, {'ratio': 0.5})
    assert RatioCache(path, {'table': 'a'}).get(name) == {'ratio': 0.5}
    # another table's measurements are not reused
    assert RatioCache(path, {'table': 'b'}).get(name) is None
    with open(path, 'w') as f:
        f.write('{"key": {"ta')  # a killed writer
    assert RatioCache(path, {'table': 'a'}).get(name) is None
    assert RatioCache.digest({'b': 1, 'a': 2}) == \
        RatioCache.digest({'a': 2, 'b': 1})
