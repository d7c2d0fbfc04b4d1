"""Per-layer CPU latency table for candidate channel widths.

A latency target cannot be met by counting MACs: oneDNN runs aligned widths
much faster than unaligned ones, and element-wise work (BN, activations,
adds) scales with the channels, not with the MACs. The table times every
prunable layer **alone**, on its real input shape and at the deployment
batch, for a small grid of (input, output) widths, so that the latency of
any pruned width combination is a sum of table lookups (bilinear between
grid points).

Layers with the same configuration (kind, widths, kernel, stride, input
size, following BN) share one entry, and the whole table is cached as JSON
in ``cache_dir`` under a key of the model structure, the example input
shape, the batch, the thread count and the torch version: a second run
with the same key measures nothing.

The dense model is timed once as well (``model_s``): its time not spent in
the tabled layers (pooling, adds, the BN / activations of layers timed
without them) is what :mod:`mmrazor_ext.pruners.latency_target` scales with
the kept activation size.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import os.path as osp
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from mmrazor_ext.utils import atomic_write_json

from .latency import clock_of

__all__ = ['LatencyTable', 'LayerSpec', 'RatioCache', 'TIMED_TYPES',
           'DEFAULT_LATENCY_CACHE_DIR', 'measure_ratio', 'random_batch']

#: module classes the table can time (subclasses too)
TIMED_TYPES = (nn.Conv2d, nn.Linear)
DEFAULT_LATENCY_CACHE_DIR = osp.join('work_dirs', 'latency_tables')
_FORMAT = 1


@dataclass(frozen=True)
class LayerSpec:
    """One timed layer configuration and its candidate widths.

    Attributes:
        kind: ``'conv2d'`` or ``'linear'``.
        in_channels / out_channels: Dense widths.
        kernel_size, stride, padding, dilation, groups: Conv geometry.
        bias: Whether the layer has a bias.
        with_bn: Time it followed by BN + ReLU (a conv-BN-act block).
        spatial: Input shape after the channel axis (``(H, W)``) for a
            conv, the shape between batch and features for a linear.
        in_widths / out_widths: Candidate kept widths (sorted). For a
            grouped conv (``groups > 1``) the input width follows the
            output (whole groups are removed): ``in_widths`` is empty.
    """

    kind: str
    in_channels: int
    out_channels: int
    kernel_size: tuple = ()
    stride: tuple = ()
    padding: tuple | str = ()
    dilation: tuple = ()
    groups: int = 1
    bias: bool = True
    with_bn: bool = False
    spatial: tuple = ()
    in_widths: tuple = ()
    out_widths: tuple = ()

    @property
    def tied(self) -> bool:
        """Whether the input width follows the output (grouped conv)."""
        return self.groups > 1

    def signature(self) -> str:
        """Stable text key of this configuration (JSON of its fields)."""
        return json.dumps(asdict(self), sort_keys=True)

    def grid(self) -> list[tuple[int, int]]:
        """The (input, output) widths to time."""
        if self.tied:
            return [self._grouped(co)[:2] for co in self.out_widths]
        return [(ci, co) for ci in self.in_widths for co in self.out_widths]

    def _grouped(self, co: int) -> tuple[int, int, int]:
        """``(in, out, groups)`` of a grouped conv keeping ``co`` outputs
        (rounded to whole groups)."""
        g = max(1, min(self.groups, round(self.groups * co /
                                          self.out_channels)))
        return (g * (self.in_channels // self.groups),
                g * (self.out_channels // self.groups), g)

    def build(self, ci: int, co: int) -> tuple[nn.Module, tuple[int, ...]]:
        """The module to time at widths ``(ci, co)`` and its input shape
        (without the batch)."""
        if self.kind == 'linear':
            layers = [nn.Linear(ci, co, bias=self.bias)]
            if self.with_bn:
                layers += [nn.BatchNorm1d(co), nn.ReLU()]
            return nn.Sequential(*layers), (*self.spatial, ci)
        groups = 1
        if self.tied:
            ci, co, groups = self._grouped(co)
        layers = [nn.Conv2d(ci, co, self.kernel_size, self.stride,
                            self.padding, self.dilation, groups=groups,
                            bias=self.bias)]
        if self.with_bn:
            layers += [nn.BatchNorm2d(co), nn.ReLU()]
        return nn.Sequential(*layers), (ci, *self.spatial)


def _layer_spec(name: str, m: nn.Module, shape: tuple, in_widths, out_widths,
                with_bn: bool) -> LayerSpec:
    if isinstance(m, nn.Linear):
        return LayerSpec('linear', m.in_features, m.out_features,
                         bias=m.bias is not None, with_bn=with_bn,
                         spatial=tuple(shape[:-1]),
                         in_widths=tuple(in_widths),
                         out_widths=tuple(out_widths))
    if isinstance(m, nn.Conv2d):
        if len(shape) != 3:
            raise ValueError(f'latency table: conv layer {name!r} got an '
                             f'input of shape {shape} (batch excluded), '
                             'expected (C, H, W)')
        pad = m.padding if isinstance(m.padding, str) else tuple(m.padding)
        return LayerSpec('conv2d', m.in_channels, m.out_channels,
                         tuple(m.kernel_size), tuple(m.stride), pad,
                         tuple(m.dilation), m.groups, m.bias is not None,
                         with_bn, tuple(shape[1:]),
                         () if m.groups > 1 else tuple(in_widths),
                         tuple(out_widths))
    raise TypeError(f'latency table: layer {name!r} is a '
                    f'{type(m).__name__}; only {[t.__name__ for t in TIMED_TYPES]} '
                    'are timed')


def _input_shapes(model: nn.Module, example_inputs: Sequence, names
                  ) -> dict[str, list[tuple]]:
    """Input shape (batch excluded) of every call of the named layers."""
    shapes: dict[str, list[tuple]] = {n: [] for n in names}
    handles = []
    for n in names:
        def hook(mod, args, n=n):
            shapes[n].append(tuple(args[0].shape[1:]))
        handles.append(model.get_submodule(n).register_forward_pre_hook(hook))
    was = model.training
    model.eval()
    try:
        with torch.inference_mode():
            model(*example_inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return shapes


def _fastest(fn: Callable[[], object], warmup: int, repeats: int,
             timer: Callable[[], float] = time.perf_counter) -> float:
    """Seconds of the fastest of ``repeats`` calls: background load only
    ever adds time, so the minimum is the least noisy statistic."""
    for _ in range(warmup):
        fn()
    best = math.inf
    for _ in range(repeats):
        t0 = timer()
        fn()
        best = min(best, timer() - t0)
    return best


def _bracket(xs: Sequence[int], x: float) -> tuple[int, int, float, float]:
    """``(i0, i1, weight of i1, scale)`` to interpolate at ``x``; below the
    first grid point the value is scaled down proportionally."""
    scale = 1.0
    if x < xs[0]:
        scale, x = max(x, 0.0) / xs[0], xs[0]
    x = min(x, xs[-1])
    for i in range(len(xs) - 1):
        if x <= xs[i + 1]:
            span = xs[i + 1] - xs[i]
            return i, i + 1, (x - xs[i]) / span if span else 0.0, scale
    return len(xs) - 1, len(xs) - 1, 0.0, scale


class LatencyTable:
    """Measured latency of each prunable layer at candidate widths.

    Args:
        model: The dense model.
        example_inputs: Inputs of one forward pass (any batch; only the
            shapes after the batch axis are used).
        candidates: ``{layer name: (input widths, output widths)}``;
            ``None`` for a side means the dense width only. Every layer
            must be a :data:`TIMED_TYPES` module.
        with_bn: Layers timed together with their following BN + ReLU.
        batch: Batch size of every measurement.
        num_threads: Intra-op threads (default: the current setting).
        repeats / warmup: Timed / untimed runs per grid point (the fastest
            timed run is kept).
        cache_dir: Folder of the JSON cache (None: no cache).
        progress: Show a tqdm progress bar while measuring.
        name: Readable prefix of the cache file name.
        clock: ``'wall'`` or ``'cpu'`` (process CPU time, one thread only;
            see :func:`~mmrazor_ext.estimators.latency.clock_of`).

    Attributes:
        key: What the cache entry is keyed by.
        path: The cache file (None without cache).
        from_cache: Whether :meth:`build` loaded everything from the cache.
        num_measurements: Grid points timed by this object.
        model_s: Latency of the dense model (seconds, fastest run).
    """

    def __init__(self, model: nn.Module,
                 example_inputs: torch.Tensor | Sequence[torch.Tensor],
                 candidates: Mapping[str, tuple[Iterable[int] | None,
                                                Iterable[int] | None]],
                 with_bn: Iterable[str] = (), batch: int = 64,
                 num_threads: int | None = None, repeats: int = 3,
                 warmup: int = 1,
                 cache_dir: str | None = DEFAULT_LATENCY_CACHE_DIR,
                 progress: bool = True, name: str | None = None,
                 clock: str = 'wall'):
        for field, v, low in (('batch', batch, 1), ('repeats', repeats, 1),
                              ('warmup', warmup, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f'latency table: {field} must be an int >= '
                                 f'{low}, got {v!r}')
        if isinstance(example_inputs, torch.Tensor):
            example_inputs = (example_inputs,)
        self.model = model
        self.example_inputs = tuple(example_inputs)
        self.batch = batch
        self.num_threads = int(num_threads or torch.get_num_threads())
        self.clock = clock
        self._timer = clock_of(clock, self.num_threads)
        self.repeats, self.warmup = repeats, warmup
        self.progress = progress
        with_bn = set(with_bn)
        shapes = _input_shapes(model, self.example_inputs, list(candidates))
        self.layers: dict[str, list[str]] = {}  # layer -> signature per call
        self.specs: dict[str, LayerSpec] = {}
        for lname, (ins, outs) in candidates.items():
            m = model.get_submodule(lname)
            if not isinstance(m, TIMED_TYPES):
                raise TypeError(f'latency table: layer {lname!r} is a '
                                f'{type(m).__name__}, not one of '
                                f'{[t.__name__ for t in TIMED_TYPES]}')
            cin = m.in_features if isinstance(m, nn.Linear) else m.in_channels
            cout = m.out_features if isinstance(m, nn.Linear) \
                else m.out_channels
            ins = sorted({int(c) for c in (ins or ())} | {cin})
            outs = sorted({int(c) for c in (outs or ())} | {cout})
            if ins[0] < 1 or outs[0] < 1 or ins[-1] > cin or outs[-1] > cout:
                raise ValueError(f'latency table: candidate widths of layer '
                                 f'{lname!r} must be in [1, {cin}] / '
                                 f'[1, {cout}], got {ins} / {outs}')
            sigs = []
            for shape in shapes[lname]:
                spec = _layer_spec(lname, m, shape, ins, outs,
                                   lname in with_bn)
                self.specs[spec.signature()] = spec
                sigs.append(spec.signature())
            self.layers[lname] = sigs
        structure = hashlib.sha1()
        structure.update(str(model).encode())
        structure.update(json.dumps(self.layers, sort_keys=True).encode())
        self.key = {
            'format': _FORMAT, 'structure': structure.hexdigest(),
            'input_shapes': [list(x.shape[1:]) for x in self.example_inputs
                             if isinstance(x, torch.Tensor)],
            'batch': batch, 'num_threads': self.num_threads,
            'torch': torch.__version__, 'repeats': repeats, 'clock': clock}
        digest = hashlib.sha1(json.dumps(self.key, sort_keys=True)
                              .encode()).hexdigest()[:16]
        prefix = name or type(model).__name__
        self.path = None if cache_dir is None else \
            osp.join(cache_dir, f'{prefix}_{digest}.json')
        self.entries: dict[str, list[list[float]]] = {}
        self.model_s: float | None = None
        self.from_cache = False
        self.num_measurements = 0

    # -- building -------------------------------------------------------------
    def _load(self) -> bool:
        if self.path is None or not osp.isfile(self.path):
            return False
        try:
            with open(self.path, encoding='utf-8') as f:
                data = json.load(f)
        except (OSError, ValueError):
            return False  # unreadable: measured again and rewritten
        if data.get('key') != self.key:
            return False
        self.entries.update({k: v for k, v in data.get('entries', {}).items()
                             if k in self.specs})
        self.model_s = data.get('model_s')
        return True

    def _save(self) -> None:
        if self.path is None:
            return
        os.makedirs(osp.dirname(self.path) or '.', exist_ok=True)
        atomic_write_json(self.path, {'key': self.key,
                                      'model_s': self.model_s,
                                      'entries': self.entries}, indent=None)

    def _batched(self, shape: tuple) -> torch.Tensor:
        gen = torch.Generator().manual_seed(0)
        return torch.randn((self.batch, *shape), generator=gen)

    def _time(self, module: nn.Module, inputs: Sequence[torch.Tensor]
              ) -> float:
        module.eval()
        with torch.inference_mode():
            return _fastest(lambda: module(*inputs), self.warmup,
                            self.repeats, self._timer)

    def build(self) -> LatencyTable:
        """Load the cached table, measuring whatever it lacks.

        Returns:
            ``self``.
        """
        loaded = self._load()
        todo = [(sig, ci, co) for sig, spec in self.specs.items()
                if sig not in self.entries for ci, co in spec.grid()]
        need_model = self.model_s is None
        self.from_cache = loaded and not todo and not need_model
        if self.from_cache:
            return self
        old = torch.get_num_threads()
        torch.set_num_threads(self.num_threads)
        try:
            if need_model:
                was = self.model.training
                inputs = [self._batched(x.shape[1:])
                          if isinstance(x, torch.Tensor) else x
                          for x in self.example_inputs]
                try:
                    self.model_s = self._time(self.model, inputs)
                finally:
                    self.model.train(was)
            results: dict[str, dict] = {}
            bar = None
            if self.progress and todo:
                from tqdm import tqdm
                bar = tqdm(total=len(todo), desc='latency table',
                           unit='layer', leave=False)
            for sig, ci, co in todo:
                module, shape = self.specs[sig].build(ci, co)
                results.setdefault(sig, {})[(ci, co)] = self._time(
                    module, (self._batched(shape),))
                self.num_measurements += 1
                if bar is not None:
                    bar.update()
            if bar is not None:
                bar.close()
        finally:
            torch.set_num_threads(old)
        for sig, res in results.items():
            spec = self.specs[sig]
            if spec.tied:
                self.entries[sig] = [[res[spec._grouped(co)[:2]]
                                      for co in spec.out_widths]]
            else:
                self.entries[sig] = [[res[(ci, co)] for co in spec.out_widths]
                                     for ci in spec.in_widths]
        self._save()
        return self

    # -- lookups --------------------------------------------------------------
    def lookup(self, signature: str, cin: float, cout: float) -> float:
        """Seconds of one call of configuration ``signature`` keeping
        ``cin`` / ``cout`` channels (bilinear between grid points)."""
        spec, rows = self.specs[signature], self.entries.get(signature)
        if rows is None:
            raise RuntimeError('latency table: not built; call build()')
        o0, o1, wo, so = _bracket(spec.out_widths, cout)
        if spec.tied:
            r = rows[0]
            return so * (r[o0] * (1 - wo) + r[o1] * wo)
        i0, i1, wi, si = _bracket(spec.in_widths, cin)
        top = rows[i0][o0] * (1 - wo) + rows[i0][o1] * wo
        bot = rows[i1][o0] * (1 - wo) + rows[i1][o1] * wo
        return si * so * (top * (1 - wi) + bot * wi)

    def layer_latency(self, layer: str, cin: float, cout: float) -> float:
        """Seconds of all calls of ``layer`` at ``cin`` / ``cout`` kept
        channels."""
        return sum(self.lookup(s, cin, cout) for s in self.layers[layer])

    def total(self, widths: Mapping[str, tuple[float, float]]) -> float:
        """Summed seconds of the tabled layers at ``{layer: (cin, cout)}``
        (a missing layer counts at its dense width)."""
        res = 0.0
        for layer, sigs in self.layers.items():
            spec = self.specs[sigs[0]]
            cin, cout = widths.get(layer, (spec.in_channels,
                                           spec.out_channels))
            res += self.layer_latency(layer, cin, cout)
        return res

    def dense_total(self) -> float:
        """:meth:`total` of the dense widths."""
        return self.total({})


def random_batch(example_inputs: Sequence, batch: int) -> tuple:
    """Random float inputs of the example shapes at ``batch`` (fixed seed;
    non-float inputs passed as they are)."""
    gen = torch.Generator().manual_seed(0)
    return tuple(torch.randn((batch, *x.shape[1:]), generator=gen,
                             dtype=x.dtype)
                 if isinstance(x, torch.Tensor) and x.is_floating_point()
                 else x for x in example_inputs)


def measure_ratio(dense: nn.Module, small: nn.Module,
                  inputs: Sequence[torch.Tensor], repeats: int = 5,
                  num_threads: int | None = None, clock: str = 'wall'
                  ) -> tuple[float, float]:
    """Fastest seconds of ``dense`` and ``small`` on ``inputs``, timed in
    turn (one forward each per round, after one warm-up each) so that
    background load and frequency changes hit both alike.

    Returns:
        ``(dense seconds, small seconds)``.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or \
            repeats < 1:
        raise ValueError(f'measure_ratio: repeats must be an int >= 1, got '
                         f'{repeats!r}')
    threads = int(num_threads or torch.get_num_threads())
    timer = clock_of(clock, threads)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    modes = [(m, m.training) for m in (dense, small)]
    best = [math.inf, math.inf]
    try:
        for m, _ in modes:
            m.eval()
        with torch.inference_mode():
            for m, _ in modes:  # oneDNN primitive creation, allocator
                m(*inputs)
            for _ in range(repeats):
                for i, (m, _) in enumerate(modes):
                    t0 = timer()
                    m(*inputs)
                    best[i] = min(best[i], timer() - t0)
    finally:
        torch.set_num_threads(old)
        for m, was in modes:
            m.train(was)
    return best[0], best[1]


class RatioCache:
    """Measured latencies of pruned variants of one model, as JSON.

    Entries are keyed by a text (the pruned widths) under a ``key`` (what
    the measurement depends on: the table's key); a file written under
    another key is ignored and replaced.

    Args:
        path: The JSON file (None: kept in memory only).
        key: JSON-serialisable context of every entry.
    """

    def __init__(self, path: str | None, key: Mapping):
        self.path, self.key = path, dict(key)
        self.entries: dict[str, dict] = {}
        if path is not None and osp.isfile(path):
            try:
                with open(path, encoding='utf-8') as f:
                    data = json.load(f)
            except (OSError, ValueError):
                data = {}  # unreadable: measured again and rewritten
            if data.get('key') == self.key:
                self.entries = dict(data.get('entries', {}))

    @staticmethod
    def digest(obj) -> str:
        """Short stable hash of a JSON-serialisable object."""
        return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()
                            ).hexdigest()[:20]

    def get(self, name: str) -> dict | None:
        return self.entries.get(name)

    def put(self, name: str, entry: Mapping) -> None:
        """Store ``entry`` and rewrite the file atomically."""
        self.entries[name] = dict(entry)
        if self.path is None:
            return
        os.makedirs(osp.dirname(self.path) or '.', exist_ok=True)
        atomic_write_json(self.path, {'key': self.key,
                                      'entries': self.entries}, indent=None)
