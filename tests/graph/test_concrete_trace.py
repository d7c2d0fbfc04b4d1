"""Tracing through Python control flow on sizes (graph/concrete_tracer):
the symbolic trace fails, the trace with the example input succeeds, sizes
the code only computes with stay graph nodes (reshapes follow pruning), a
branch on tensor data is still an error, and tracing leaves the model's
buffers and the RNG as they were."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers.models import prune_half
from mmrazor_ext.graph import TraceError
from mmrazor_ext.graph.tracer import trace_model


class WindowBlock(nn.Module):
    """Window attention in the style of timm's: pads to a multiple of the
    window only when needed, unpacks sizes, calls ``int`` / ``len`` on them
    and caches a size-dependent buffer (as ConViT's ``rel_indices``)."""

    def __init__(self, dim=16, window=3, heads=2):
        super().__init__()
        self.window, self.heads = window, heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.register_buffer('bias', torch.zeros(1, 1, 1), persistent=False)

    def forward(self, x):
        B, C, H, W = x.shape
        assert len(x.shape) == 4
        pad_h = (self.window - H % self.window) % self.window
        pad_w = (self.window - W % self.window) % self.window
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        Hp, Wp = x.shape[2:]
        nw = int(Hp // self.window) * int(Wp // self.window)
        t = x.permute(0, 2, 3, 1).reshape(B * nw, -1, C)
        n = t.shape[1]
        if self.bias.shape[-1] != n:  # rebuilt for this input size
            self.bias = torch.arange(n, dtype=t.dtype).view(1, 1, n) / n
        q, k, v = self.qkv(t).chunk(3, -1)
        a = (q @ k.transpose(1, 2) + self.bias).softmax(-1)
        out = self.proj(a @ v).reshape(B, Hp, Wp, C).permute(0, 3, 1, 2)
        return out[:, :, :H, :W]


class WindowNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.drop = nn.Dropout(0.5)
        self.block = WindowBlock()
        self.conv = nn.Conv2d(16, 32, 3, padding=1)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = self.drop(self.bn(self.stem(x)).relu())
        x = x + self.block(x)
        x = self.conv(x).relu().mean((2, 3))
        return self.head(x)


def test_size_branches_need_the_example_input():
    model = WindowNet().eval()
    x = torch.randn(2, 3, 10, 10)
    with pytest.raises(TraceError, match='control flow|len|int'):
        trace_model(model)
    gm = trace_model(model, example_inputs=(x,))
    assert 'control flow' in gm.meta['concrete_trace'] or \
        'len' in gm.meta['concrete_trace']
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x))
    # unpacked sizes stay nodes: the reshapes take them from the graph
    # (they follow a pruned width), only the branch was decided
    reshapes = [n for n in gm.graph.nodes if n.target == 'reshape']
    assert any(isinstance(a, torch.fx.Node) for n in reshapes
               for a in n.args[1:])
    assert any(n.target == F.pad for n in gm.graph.nodes)
    # a multiple of the window takes the other branch: no pad recorded
    gm2 = trace_model(model, example_inputs=(torch.randn(2, 3, 9, 9),))
    assert not any(n.target == F.pad for n in gm2.graph.nodes)


def test_window_net_prunes_and_exports_equivalently(monkeypatch):
    import mmrazor_ext.pruners.channel_pruner as cp
    logged = []
    monkeypatch.setattr(cp, 'print_log', lambda msg, **kw: logged.append(msg))
    torch.manual_seed(0)
    model = WindowNet().eval()
    x = torch.randn(1, 3, 10, 10)
    pruner, small, ratio = prune_half(model, x)
    assert pruner.graph.gm.meta.get('concrete_trace')
    # the user is told the graph follows this input's shape
    assert any('traced with the example input [(1, 3, 10, 10)]' in m
               for m in logged), logged
    with torch.no_grad():
        assert small(x).shape == (1, 10)
    assert ratio <= 0.75, ratio
    # the residual stream was cut: the reshapes took the pruned width from
    # the traced sizes
    assert small.block.qkv.in_features < 16
    assert small.block.proj.out_features == small.stem.out_channels < 16


def test_branch_on_tensor_data_is_still_an_error():
    class DataBranch(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 1)

        def forward(self, x):
            y = self.conv(x)
            if y.mean() > 0:
                y = y * 2
            return y

    with pytest.raises(TraceError, match='input data'):
        trace_model(DataBranch(), example_inputs=(torch.randn(1, 3, 4, 4),))


def test_train_mode_trace_leaves_buffers_and_rng_alone():
    torch.manual_seed(0)
    model = WindowNet().train()
    x = torch.randn(2, 3, 10, 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bias = model.block.bias
    torch.manual_seed(123)
    gm = trace_model(model, example_inputs=(x,))
    after_rng = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(after_rng, torch.rand(3))  # nothing drawn
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # BN running stats untouched
    assert model.block.bias is bias  # the replaced cache is put back
    assert model.training and gm.meta.get('concrete_trace')


def test_setitem_on_rows_ties_channels_like_an_add():
    """``y[:, :, :2] = z[:, :, :2]`` writes whole channel columns: ``y`` and
    ``z`` share channels (pruned together), the export is exact."""

    class RowCopy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 16, 3, padding=1)
            self.b = nn.Conv2d(3, 16, 1)
            self.head = nn.Conv2d(16, 4, 1)

        def forward(self, x):
            y, z = self.a(x), self.b(x)
            y[:, :, :2] = z[:, :, :2]
            return self.head(y.relu()).mean((2, 3))

    torch.manual_seed(0)
    pruner, small, _ = prune_half(RowCopy().eval(), torch.randn(1, 3, 6, 6))
    assert pruner.graph.gm.meta.get('concrete_trace')
    outs = [{name for name, role in sp.members if role == 'out'}
            for sp in pruner.channel_spaces.values()]
    assert any({'a', 'b'} <= s for s in outs), outs
    assert small.a.out_channels == small.b.out_channels < 16


def test_amc_op_count_of_a_size_branching_model():
    from mmrazor_ext.search.amc_search import count_ops
    model, x = WindowNet().eval(), torch.randn(1, 3, 10, 10)
    with pytest.raises(TraceError):
        count_ops(model)
    assert count_ops(model, (x,)) > 20  # every op of the traced graph
