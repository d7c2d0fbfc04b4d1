"""A deterministic clock for latency-table tests: what they test is how the
table is used, not how a loaded 2-core CI times thin layers (the real
figures are in ``tools/benchmark/pruning_speed.py --latency-target``)."""
import torch


def lanes_time(self, module, inputs):
    """A deterministic machine with 8-wide SIMD lanes: a conv / linear call
    costs a fixed overhead, a memory term per output element and MACs over
    channel counts padded to multiples of 8; a whole model costs its layers
    plus 25 % outside them."""
    costs = []

    def hook(mod, args, out):
        pad = lambda c: -(-c // 8) * 8  # noqa: E731
        if isinstance(mod, torch.nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1]
            cin, cout = mod.in_channels // mod.groups, mod.out_channels
            per = out[0, 0].numel() * out.shape[0] * k
        else:
            cin, cout = mod.in_features, mod.out_features
            per = out.numel() // out.shape[-1]
        costs.append(1e-4 + 5e-9 * out.numel()
                     + 1e-10 * per * pad(cin) * pad(cout))

    hooks = [m.register_forward_hook(hook) for m in module.modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    try:
        with torch.no_grad():
            module(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return sum(costs) * (1.25 if len(costs) > 1 else 1.0)


def lanes_clock(monkeypatch) -> None:
    """Make every :class:`LatencyTable` time layers with :func:`lanes_time`."""
    from mmrazor_ext.estimators import LatencyTable
    monkeypatch.setattr(LatencyTable, '_time', lanes_time)
