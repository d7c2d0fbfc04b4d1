"""Block merging: compose a residual block with a nearly linear branch into
ONE convolution.

A removable block (identity shortcut, see :mod:`.blocks`) computes

    y = post(x + B(x)),   B = L_n o a_{n-1} o ... o a_1 o L_1

where every ``L_i`` is a stride-1 convolution or a BatchNorm (affine in eval
mode), every ``a_i`` an element-wise activation, and ``post`` whatever
follows the residual add inside the block (e.g. the final ReLU of a
``BasicBlock``). **Merging** drops the ``a_i`` (uses ``a_i(z) = z``) and
composes ``x + L_n o ... o L_1 (x)`` into one ``Conv2d``: the kernels are
convolved (kernel ``sum(k_i - 1) + 1``: 3x3 o 3x3 -> 5x5), BN is folded
into weights and bias, grouped / depthwise convs are expanded to dense ones
and the identity shortcut is added at the centre tap; ``post`` is kept. The
block loses its residual add, its BNs and all but one conv.

**Rule.** On calibration batches, with ``M`` the merged conv evaluated where
the residual add was (before ``post``), a block's *merge error* is

    merge_error = ||M(x) - (x + B(x))|| / ||B(x)||

(Frobenius norms summed over every sample of every batch): the fraction of
the residual branch the merge gets wrong. Removing the block replaces
``B(x)`` by 0, i.e. has error exactly 1 on this scale, so a block with
``merge_error <= linear_tol`` (``linear_tol < 1``) keeps at least
``1 - linear_tol`` of its branch. Diagnostics per block: ``nonlinearity`` =
max over its activations of ``||a(z) - z|| / ||z||`` and ``changed`` = the
fraction of pre-activation entries the activations change.

**Why the error is measured, not assumed zero for a linear branch.** The
composition of the affine maps is exact at every output pixel whose
receptive field never reads the *zero padding of an intermediate map*: the
original network zero-pads each intermediate map (after its BN, whose bias
is not zero), the merged conv zero-pads only ``x``. So the merged conv equals
the linearised branch exactly when every conv after the first is 1x1 and
no BN / bias precedes a padded conv, and otherwise differs on an output
ring as wide as the later convs' padding (1 pixel for 3x3 o 3x3: 108 of 784
pixels at 28x28, 24 of 49 at 7x7). No single convolution can reproduce that
border (it is position dependent), so the measured error includes it.

**Cost.** Composing raises MACs when the branch is a cheap factorisation:
3x3 o 3x3 (c -> c -> c) costs 18 c^2 MACs per pixel, the merged 5x5 conv
25 c^2 (+39 %); a bottleneck (1x1 -> 3x3 -> 1x1) merges into a dense c x c
3x3 conv that is far more expensive. MobileNetV2's inverted residual with
expansion t (1x1 up, depthwise 3x3, 1x1 down) costs ``2 t c^2 + 9 t c`` and
merges into ``9 c^2``: cheaper for t = 6, dearer for t = 1. The caller
counts the MACs (``algorithms.fusion.merge_flops_delta``) and a FLOPs
target pays for them (``algorithms.fusion.plan_fusion``).

A block is *mergeable* when it is removable, has one residual add whose
shortcut operand is the block input, its branch is a chain (each op has one
input and one user) of ``Conv2d`` (stride 1, dilation 1, zero padding,
odd kernel with "same" padding, any groups), ``BatchNorm2d`` with running
statistics, activations (:data:`ACTIVATION_MODULES`,
:data:`ACTIVATION_FUNCTIONS`) and eval-mode no-ops (``Identity``,
``Dropout``, ``DropPath``); otherwise :func:`find_mergeable` gives the
reason.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from .blocks import BlockAnalysis, find_blocks
from .patterns import is_plain_bn

__all__ = ['ACTIVATION_FUNCTIONS', 'ACTIVATION_MODULES', 'MergeInfo',
           'MergeMeter', 'compose_branch', 'find_mergeable', 'merge_blocks',
           'merged_block_module']

#: Element-wise activation modules a merge may drop.
ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.Hardtanh,
                      nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU,
                      nn.Hardswish, nn.Mish, nn.Softplus, nn.Tanh)
#: Element-wise activation functions / tensor methods a merge may drop.
ACTIVATION_FUNCTIONS = (F.relu, torch.relu, F.relu_, torch.relu_, F.relu6,
                        F.leaky_relu, F.hardtanh, F.elu, F.gelu, F.silu,
                        F.hardswish, F.mish, F.softplus, torch.tanh,
                        'relu', 'relu_', 'tanh')
_NOOP_MODULES = (nn.Identity, nn.Dropout, nn.Dropout2d, nn.AlphaDropout)


@dataclass
class MergeInfo:
    """Whether and how one block can be merged.

    Attributes:
        name: Block name.
        mergeable: Whether :func:`merge_blocks` accepts it.
        reason: Why not ('' when mergeable).
        steps: Branch ops from input to add: ``(kind, target)`` with kind
            ``'conv'`` / ``'bn'`` (target: module name) or ``'act'``.
        activations: FX node names of the activations the merge drops.
        kernel_size / padding: Of the merged conv.
        channels: Block channels (in == out).
        exact: True when the merged conv equals the linearised branch on
            every pixel (no intermediate zero padding is read); False: it
            differs on a border ring (see the module docstring).
    """

    name: str
    mergeable: bool
    reason: str = ''
    steps: list = field(default_factory=list)
    activations: list = field(default_factory=list)
    kernel_size: tuple = ()
    padding: tuple = ()
    channels: int = 0
    exact: bool = False

    def to_dict(self) -> dict:
        return {'name': self.name, 'mergeable': self.mergeable,
                'reason': self.reason, 'kernel_size': list(self.kernel_size),
                'padding': list(self.padding), 'exact': self.exact}


def _is_activation(node: fx.Node, module: nn.Module | None) -> bool:
    if node.op == 'call_module':
        return isinstance(module, ACTIVATION_MODULES)
    if node.op in ('call_function', 'call_method'):
        return any(node.target is f or node.target == f
                   for f in ACTIVATION_FUNCTIONS)
    return False


def _is_noop(module: nn.Module | None) -> bool:
    return isinstance(module, _NOOP_MODULES) or \
        type(module).__name__ == 'DropPath'  # mmcv / mmpretrain / timm


def _same_padding(conv: nn.Conv2d) -> tuple | str:
    """The conv's per-side padding if it keeps the spatial size, else why
    not."""
    k = tuple(conv.kernel_size)
    if any(s != 1 for s in conv.stride):
        return (f'stride {tuple(conv.stride)} (only stride-1 convs compose '
                'into one conv of the block size)')
    if any(d != 1 for d in conv.dilation):
        return f'dilation {tuple(conv.dilation)}'
    if conv.padding_mode != 'zeros':
        return f"padding_mode '{conv.padding_mode}'"
    if any(x % 2 == 0 for x in k):
        return f'even kernel {k}'
    pad = conv.padding
    if isinstance(pad, str):
        pad = tuple((x - 1) // 2 for x in k) if pad == 'same' else (0, 0)
    pad = tuple(pad)
    if pad != tuple((x - 1) // 2 for x in k):
        return f'padding {pad} does not keep the size of kernel {k}'
    return pad


def _analyse_one(analysis: BlockAnalysis, name: str) -> MergeInfo:
    info = analysis.blocks[name]
    out = MergeInfo(name, False)
    if not info.removable:
        out.reason = f'not removable: {info.reason}'
        return out
    gm = analysis.gm
    by_name = {n.name: n for n in gm.graph.nodes}
    x_in, add = by_name[info.input_node], by_name[info.add_node]
    if info.shortcut_node != info.input_node:
        out.reason = ('several residual adds: the shortcut goes through an '
                      'earlier add of the block')
        return out
    branch = add.args[1] if add.args[0] is x_in else add.args[0]
    if add.kwargs or len(add.args) != 2:
        out.reason = f'residual add {add.name} has extra arguments'
        return out
    chain, node = [], branch
    while node is not x_in:
        inputs = [a for a in node.all_input_nodes if a.op != 'get_attr']
        if len(inputs) != 1 or len(node.users) != 1:
            out.reason = (f'branch is not a chain: {node.name} has '
                          f'{len(inputs)} tensor inputs and '
                          f'{len(node.users)} users')
            return out
        chain.append(node)
        node = inputs[0]
    chain.reverse()
    region = set(analysis._scopes[name])
    post, todo = set(), list(add.users)
    while todo:
        n = todo.pop()
        if n in region and n not in post:
            post.add(n)
            todo.extend(n.users)
    extra = region - set(chain) - post - {add}
    if extra:
        out.reason = ('ops outside the branch chain: '
                      f'{sorted(n.name for n in extra)}')
        return out
    steps, acts, pads, kernel = [], [], [0, 0], [1, 1]
    # ``zero_ring``: the composed map is still 0 outside the image, so a
    # padded conv here reads the same zeros as in the original network
    zero_ring, exact = True, True
    for n in chain:
        mod = gm.get_submodule(n.target) if n.op == 'call_module' else None
        if _is_activation(n, mod):
            steps.append(('act', n.name))
            acts.append(n.name)
        elif mod is not None and _is_noop(mod):
            continue
        elif type(mod) is nn.Conv2d:
            pad = _same_padding(mod)
            if isinstance(pad, str):
                out.reason = f'conv {n.target}: {pad}'
                return out
            if any(pad):
                exact = exact and zero_ring
                zero_ring = False
            elif mod.bias is not None:
                zero_ring = False
            steps.append(('conv', n.target))
            pads = [p + q for p, q in zip(pads, pad)]
            kernel = [k + int(m) - 1 for k, m in zip(kernel, mod.kernel_size)]
        elif isinstance(mod, nn.BatchNorm2d) and is_plain_bn(mod):
            if mod.running_mean is None:
                out.reason = (f'BN {n.target} has no running statistics '
                              '(batch statistics are not affine)')
                return out
            steps.append(('bn', n.target))
            zero_ring = False  # its bias (beta - mean * scale)
        elif isinstance(mod, nn.Conv2d):
            out.reason = (f'conv {n.target} is a {type(mod).__qualname__} '
                          '(a Conv2d subclass may change the forward)')
            return out
        else:
            what = n.target if n.op != 'call_module' else \
                f'{n.target} ({type(mod).__name__})'
            out.reason = (f'unsupported op in the branch: {n.op} {what} '
                          '(merging composes conv / BN / activations only)')
            return out
    out.steps, out.activations = steps, acts
    out.kernel_size, out.padding = tuple(kernel), tuple(pads)
    out.channels = int(info.in_shape[1]) if len(info.in_shape) > 1 else 0
    out.exact = exact
    if len(info.in_shape) != 4:
        out.reason = f'block input is not 4-D: {list(info.in_shape)}'
        return out
    out.mergeable = True
    return out


def find_mergeable(analysis: BlockAnalysis) -> dict[str, MergeInfo]:
    """:class:`MergeInfo` of every block of ``analysis`` (graph order)."""
    return {n: _analyse_one(analysis, n) for n in analysis.blocks}


def _dense_weight(conv: nn.Conv2d) -> torch.Tensor:
    w = conv.weight.detach().double()
    g = conv.groups
    if g == 1:
        return w
    cin, cout = conv.in_channels, conv.out_channels
    dense = w.new_zeros(cout, cin, *w.shape[2:])
    oi, ii = cout // g, cin // g
    for k in range(g):  # block-diagonal: group k sees its own inputs only
        dense[k * oi:(k + 1) * oi, k * ii:(k + 1) * ii] = w[k * oi:(k + 1) * oi]
    return dense


def _affine(model: nn.Module, kind: str, target: str):
    """(weight, bias) of one affine step, float64, weight as a conv kernel."""
    mod = model.get_submodule(target)
    if kind == 'conv':
        w = _dense_weight(mod)
        b = mod.bias.detach().double() if mod.bias is not None else \
            w.new_zeros(w.shape[0])
        return w, b
    var = mod.running_var.detach().double()
    mean = mod.running_mean.detach().double()
    scale = (var + mod.eps).rsqrt()
    if mod.weight is not None:
        scale = scale * mod.weight.detach().double()
    bias = -mean * scale
    if mod.bias is not None:
        bias = bias + mod.bias.detach().double()
    return torch.diag(scale)[:, :, None, None], bias


def _compose(w1, b1, w2, b2):
    """Kernel and bias of ``conv(w2, b2) o conv(w1, b1)`` (stride 1, the
    padding of both applied to the input: see the module docstring)."""
    kh, kw = w2.shape[-2:]
    # cross-correlation o cross-correlation = cross-correlation with the
    # full convolution of the kernels: treat w1's input channels as a batch
    w = F.conv2d(w1.transpose(0, 1), w2.flip(-1, -2),
                 padding=(kh - 1, kw - 1)).transpose(0, 1)
    b = w2.sum((2, 3)) @ b1 + b2
    return w, b


def compose_branch(model: nn.Module, info: MergeInfo) -> nn.Conv2d:
    """The merged conv of a mergeable block (identity shortcut included).

    Args:
        model: The model (live weights; BN in eval semantics).
        info: The block's :class:`MergeInfo`.

    Returns:
        A new ``nn.Conv2d(c, c, kernel_size, padding=padding, bias=True)``
        on the device / dtype of the block's weights.
    """
    if not info.mergeable:
        raise ValueError(f'block {info.name!r} cannot be merged: '
                         f'{info.reason}')
    c = info.channels
    ref = None
    w = torch.eye(c, dtype=torch.float64)[:, :, None, None]
    b = torch.zeros(c, dtype=torch.float64)
    for kind, target in info.steps:
        if kind == 'act':
            continue
        w2, b2 = _affine(model, kind, target)
        if ref is None:
            ref = next(iter(model.get_submodule(target).state_dict(
                keep_vars=True).values()))
        w, b = _compose(w.to(w2.device), b.to(w2.device), w2, b2)
    ph, pw = info.padding
    if tuple(w.shape) != (c, c, 2 * ph + 1, 2 * pw + 1):
        raise RuntimeError(f'block {info.name!r}: composed kernel '
                           f'{tuple(w.shape)} does not match padding '
                           f'{info.padding}')
    w[:, :, ph, pw] += torch.eye(c, dtype=w.dtype, device=w.device)
    dtype = ref.dtype if ref is not None else torch.float32
    device = ref.device if ref is not None else w.device
    conv = nn.Conv2d(c, c, tuple(w.shape[2:]), padding=(ph, pw), bias=True,
                     device=device, dtype=dtype)
    with torch.no_grad():
        conv.weight.copy_(w)
        conv.bias.copy_(b)
    return conv


def _reuse(conv: nn.Conv2d, model: nn.Module, info: MergeInfo) -> None:
    """Give ``conv`` Parameter objects of the block (data replaced), so an
    optimizer built before the merge trains it and a resumed optimizer
    state (whose buffers have the merged shapes) matches."""
    params = [p for k, t in info.steps if k != 'act'
              for p in model.get_submodule(t).parameters(recurse=False)]
    weights = [p for p in params if p.dim() == 4]
    biases = [p for p in params if p.dim() == 1 and p.numel() == info.channels]
    with torch.no_grad():
        if weights:
            weights[0].data = conv.weight.data
            conv.weight = weights[0]
        if biases:
            biases[-1].data = conv.bias.data
            conv.bias = biases[-1]


def merged_block_module(model: nn.Module, analysis: BlockAnalysis,
                        name: str, info: MergeInfo | None = None,
                        reuse_params: bool = False) -> fx.GraphModule:
    """The replacement of one block: merged conv, then the block's post-add
    ops (e.g. its final ReLU).

    Args:
        model: The model whose weights are composed (``analysis`` may come
            from a model with the same structure, e.g. before a deep copy).
        analysis: ``find_blocks`` of the model's structure.
        name: A mergeable block.
        info: Its :class:`MergeInfo` (computed when None).
        reuse_params: Take the merged conv's Parameter objects from the
            block's conv weight and a per-channel parameter (see
            :func:`merge_blocks`); the block is then unusable.

    Returns:
        A ``GraphModule`` ``MergedBlock`` with submodule ``merged_conv`` and
        the post-add modules under their names relative to the block.
    """
    info = info or _analyse_one(analysis, name)
    conv = compose_branch(model, info)
    if reuse_params:
        _reuse(conv, model, info)
    binfo = analysis.blocks[name]
    by_name = {n.name: n for n in analysis.gm.graph.nodes}
    add = by_name[binfo.add_node]
    region = analysis._scopes[name]
    after = region[region.index(add) + 1:]
    prefix = name + '.'
    graph = fx.Graph()
    x = graph.placeholder('x')
    env = {add: graph.call_module('merged_conv', (x,))}
    root: dict = {'merged_conv': conv}
    for n in after:
        new = graph.node_copy(n, lambda m: env[m])
        if n.op in ('call_module', 'get_attr'):
            local = n.target[len(prefix):] if n.target.startswith(prefix) \
                else n.target
            new.target = local
            obj = model.get_submodule(n.target) if n.op == 'call_module' \
                else _get_attr(model, n.target)
            root[local] = obj
        env[n] = new
    graph.output(env[by_name[binfo.output_node]])
    gm = fx.GraphModule(root, graph, 'MergedBlock')
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


def _get_attr(model: nn.Module, target: str):
    owner, _, attr = target.rpartition('.')
    return getattr(model.get_submodule(owner) if owner else model, attr)


def merge_blocks(model: nn.Module, names: Iterable[str],
                 analysis: BlockAnalysis | None = None,
                 example_inputs: torch.Tensor | Sequence[torch.Tensor]
                 | None = None,
                 inplace: bool = False,
                 leaf_modules: Iterable[type | str] = ()) -> nn.Module:
    """Replace blocks by their merged conv (+ post-add ops).

    Args:
        model: The model (BN statistics final: they are folded).
        names: Blocks to merge (each must be mergeable).
        analysis: ``find_blocks`` of ``model`` (from ``example_inputs``
            when None).
        example_inputs: Needed when ``analysis`` is None.
        inplace: Modify ``model``; the merged conv then reuses Parameter
            objects of the block (its first conv weight, its last
            per-channel parameter, data replaced), so an optimizer built
            before the merge keeps training it. Otherwise a deep copy.
        leaf_modules: Extra tracer leaf modules.

    Returns:
        The merged model (``model`` itself when ``inplace``).

    Raises:
        ValueError: A name is not a block or not mergeable (with the
            reason).
    """
    names = list(dict.fromkeys(names))
    if not names:
        return model if inplace else copy.deepcopy(model)
    if analysis is None:
        if example_inputs is None:
            raise ValueError('merge_blocks needs analysis or example_inputs')
        analysis = find_blocks(model, example_inputs, leaf_modules)
    infos = {}
    for name in names:
        if name not in analysis.blocks:
            raise ValueError(f'{name!r} is not a residual block (known: '
                             f'{list(analysis.blocks)})')
        infos[name] = _analyse_one(analysis, name)
        if not infos[name].mergeable:
            raise ValueError(f'block {name!r} cannot be merged: '
                             f'{infos[name].reason}')
    new = model if inplace else copy.deepcopy(model)
    reps = {n: merged_block_module(new, analysis, n, infos[n],
                                   reuse_params=inplace) for n in names}
    for name, rep in reps.items():
        owner, _, attr = name.rpartition('.')
        rep.train(new.get_submodule(name).training)
        setattr(new.get_submodule(owner) if owner else new, attr, rep)
    return new


class _Meter(fx.Interpreter):
    def __init__(self, gm, acts, adds):
        super().__init__(gm)
        self.acts, self.adds = acts, adds

    def run_node(self, n):
        if n.name in self.acts:
            args, _ = self.fetch_args_kwargs_from_env(n)
            z = args[0].detach().clone()  # the activation may be in place
            out = super().run_node(n)
            self.acts[n.name](z, out.detach())
            return out
        out = super().run_node(n)
        if n.name in self.adds:
            x_node, fn = self.adds[n.name]
            fn(self.env[x_node].detach(), out.detach())
        return out


class MergeMeter:
    """Calibration statistics of the merge rule (see the module docstring).

    Args:
        model: The model ``analysis`` was found on.
        analysis: Its :class:`BlockAnalysis` (its ``gm`` shares the live
            modules).
        names: Mergeable blocks to measure (default: all mergeable ones).

    Example:
        >>> meter = MergeMeter(model, find_blocks(model, x))
        >>> for inputs in batches:
        ...     meter.update(inputs)
        >>> meter.statistics()  # {block: {'merge_error', ...}}
    """

    def __init__(self, model: nn.Module, analysis: BlockAnalysis,
                 names: Iterable[str] | None = None):
        self.model, self.analysis = model, analysis
        self.infos = find_mergeable(analysis)
        names = [n for n, i in self.infos.items() if i.mergeable] \
            if names is None else list(names)
        for n in names:
            if n not in self.infos or not self.infos[n].mergeable:
                reason = self.infos[n].reason if n in self.infos else \
                    'not a residual block'
                raise ValueError(f'block {n!r} cannot be merged: {reason}')
        self.names = names
        self._sums = {n: dict(err=0.0, ref=0.0, changed=0, numel=0,
                              act={a: [0.0, 0.0]
                                   for a in self.infos[n].activations})
                      for n in names}
        self.num_samples = 0
        self._convs: dict[str, nn.Conv2d] = {}

    def _act_fn(self, name, act):
        def fn(z, a):
            s = self._sums[name]
            d = (a.double() - z.double())
            s['act'][act][0] += float(d.pow(2).sum())
            s['act'][act][1] += float(z.double().pow(2).sum())
            s['changed'] += int((a != z).sum())
            s['numel'] += z.numel()
        return fn

    def _add_fn(self, name):
        conv = self._convs[name]

        def fn(x, y):
            s = self._sums[name]
            m = conv(x)
            s['err'] += float((m.double() - y.double()).pow(2).sum())
            s['ref'] += float((y.double() - x.double()).pow(2).sum())
        return fn

    @torch.no_grad()
    def update(self, inputs: torch.Tensor | Sequence[torch.Tensor]) -> None:
        """Run one batch in eval mode and accumulate the statistics."""
        if isinstance(inputs, torch.Tensor):
            inputs = (inputs,)
        # composed from the live weights at every update: cheap, and never
        # stale if the model changed between batches
        self._convs = {n: compose_branch(self.model, self.infos[n])
                       for n in self.names}
        acts, adds = {}, {}
        by_name = {n.name: n for n in self.analysis.gm.graph.nodes}
        for n in self.names:
            for a in self.infos[n].activations:
                acts[a] = self._act_fn(n, a)
            b = self.analysis.blocks[n]
            adds[b.add_node] = (by_name[b.input_node], self._add_fn(n))
        gm = self.analysis.gm
        # gm shares the model's modules: restore each one's own mode
        modes = [(m, m.training) for m in gm.modules()]
        gm.eval()
        try:
            _Meter(gm, acts, adds).run(*inputs)
        finally:
            for m, mode in modes:
                m.training = mode
        self.num_samples += inputs[0].shape[0]

    def statistics(self) -> dict[str, dict]:
        """``{block: {'merge_error', 'nonlinearity', 'changed', 'exact',
        'n'}}`` (see the module docstring).

        Raises:
            ValueError: No batch was measured yet.
        """
        if self.names and not self.num_samples:
            raise ValueError('MergeMeter: no batches measured; the merge '
                             'error needs calibration data (call update)')
        res = {}
        for n in self.names:
            s = self._sums[n]
            if s['ref'] > 0:
                err = math.sqrt(s['err'] / s['ref'])
            else:  # a dead branch: exact iff the merge is exact
                err = 0.0 if s['err'] == 0 else float('inf')
            nonlin = max((math.sqrt(d / z) if z > 0 else 0.0
                          for d, z in s['act'].values()), default=0.0)
            res[n] = {'merge_error': err, 'nonlinearity': nonlin,
                      'changed': s['changed'] / s['numel'] if s['numel']
                      else 0.0,
                      'exact': self.infos[n].exact, 'n': self.num_samples}
        return res
