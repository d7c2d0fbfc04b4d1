"""Removable units for layer pruning: residual blocks found on the FX graph.

A *block* is the innermost module that owns a residual addition in the
traced graph (``out = branch(x) + shortcut(x)``). It is found from the model
and an example input only, never from names, so it works for mmpretrain's
``BasicBlock`` / ``Bottleneck``, torchvision's blocks, MobileNetV2's
``InvertedResidual`` and any user block of the same form.

A block is **removable** (replaceable by ``nn.Identity``) when

* it is called exactly once and has one tensor input and one tensor output,
* its output shape equals its input shape, and
* the shortcut operand of its (last) residual add is the block input itself
  (directly or through earlier residual adds of the same block).

Otherwise it is reported with a reason, e.g. a projection / downsampling
shortcut. Such blocks can still be shortened with ``mode='keep_shortcut'``:
the residual branch is dropped and the shortcut (plus whatever follows the
add, e.g. the final ReLU) is kept, as a small ``GraphModule`` cut out of the
traced graph. Removable blocks with a nearly linear branch can instead be
merged into one conv (:mod:`.merge`).
"""
from __future__ import annotations

import copy
import operator
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from .tracer import trace_model

__all__ = ['BlockInfo', 'BlockAnalysis', 'find_blocks', 'remove_blocks']

_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_ADD_METHODS = {'add', 'add_'}
_CALL_SUFFIX = re.compile(r'@\d+$')


@dataclass
class BlockInfo:
    """One residual block of a model.

    Attributes:
        name: Qualified module name.
        removable: Whether it can be replaced by ``nn.Identity``.
        reason: Why it is not removable ('' when it is).
        in_shape / out_shape: Shapes on the example input (batch included).
        shortcut_modules: Modules on the shortcut path (empty: identity).
        branch_modules: Modules on the residual branch.
        input_node / output_node / add_node: FX node names in
            :attr:`BlockAnalysis.gm` (where feature metrics read features).
        can_keep_shortcut: Whether ``mode='keep_shortcut'`` applies.
    """

    name: str
    removable: bool
    reason: str = ''
    in_shape: tuple = ()
    out_shape: tuple = ()
    shortcut_modules: list = field(default_factory=list)
    branch_modules: list = field(default_factory=list)
    input_node: str | None = None
    output_node: str | None = None
    add_node: str | None = None
    shortcut_node: str | None = None
    can_keep_shortcut: bool = False

    def to_dict(self) -> dict:
        """JSON-friendly summary."""
        return {'name': self.name, 'removable': self.removable,
                'reason': self.reason, 'in_shape': list(self.in_shape),
                'out_shape': list(self.out_shape),
                'shortcut_modules': list(self.shortcut_modules),
                'can_keep_shortcut': self.can_keep_shortcut}


def _is_add(node: fx.Node) -> bool:
    if node.op == 'call_function' and node.target in _ADD_FUNCTIONS:
        return True
    return node.op == 'call_method' and node.target in _ADD_METHODS


def _shape(node) -> tuple | None:
    meta = node.meta.get('tensor_meta') if isinstance(node, fx.Node) else None
    shape = getattr(meta, 'shape', None)
    return tuple(shape) if shape is not None else None


def _residual_add(node: fx.Node) -> bool:
    """An add of two graph tensors of equal shape (not a bias add)."""
    if not _is_add(node) or len(node.args) < 2:
        return False
    a, b = node.args[:2]
    if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)):
        return False
    if a.op == 'get_attr' or b.op == 'get_attr':
        return False  # adding a parameter (e.g. a positional embedding)
    sa, sb = _shape(a), _shape(b)
    return sa is not None and sa == sb


def _stack(node: fx.Node) -> list[str]:
    return list((node.meta.get('nn_module_stack') or {}).keys())


def _ancestors(node: fx.Node, region: set) -> set:
    """Nodes of ``region`` that ``node`` depends on (itself included)."""
    seen, todo = set(), [node]
    while todo:
        n = todo.pop()
        if n in seen or n not in region:
            continue
        seen.add(n)
        todo.extend(n.all_input_nodes)
    return seen


class BlockAnalysis:
    """Residual blocks of a model, in graph order.

    Args:
        model: Model to analyse (an mmengine model is traced on its tensor
            path). It is not modified.
        example_inputs: Tensor or tuple of tensors for one forward pass.
        leaf_modules: Extra leaf modules for the tracer.

    Attributes:
        gm: Traced ``GraphModule`` (shares the model's modules) whose nodes
            carry ``tensor_meta`` shapes.
        blocks: ``{name: BlockInfo}`` in graph order.
    """

    def __init__(self, model: nn.Module,
                 example_inputs: torch.Tensor | Sequence[torch.Tensor],
                 leaf_modules: Iterable[type | str] = ()):
        if isinstance(example_inputs, torch.Tensor):
            example_inputs = (example_inputs,)
        self.example_inputs = tuple(example_inputs)
        self.leaf_modules = tuple(leaf_modules)
        was_training = model.training
        model.eval()  # shapes only; eval BN leaves running stats alone
        try:
            self.gm = trace_model(model, leaf_modules=self.leaf_modules,
                                  example_inputs=self.example_inputs)
            with torch.no_grad():
                ShapeProp(self.gm).propagate(*self.example_inputs)
        finally:
            model.train(was_training)
        self.blocks: dict[str, BlockInfo] = {}
        self._analyse()

    @property
    def removable(self) -> list[str]:
        """Names of the removable blocks, in graph order."""
        return [n for n, b in self.blocks.items() if b.removable]

    # -- analysis ---------------------------------------------------------------
    def _analyse(self) -> None:
        nodes = list(self.gm.graph.nodes)
        # one pass: the nodes under every module scope ('name@1' = 2nd call)
        self._scopes: dict[str, list[fx.Node]] = {}
        for n in nodes:
            for key in _stack(n):
                self._scopes.setdefault(key, []).append(n)
        owners: dict[str, list[fx.Node]] = {}
        for n in nodes:
            if not _residual_add(n):
                continue
            stack = _stack(n)
            if not stack:
                continue  # an add in the root forward is no block of its own
            owners.setdefault(_CALL_SUFFIX.sub('', stack[-1]), []).append(n)
        for name, adds in owners.items():
            self.blocks[name] = self._block(name, adds)

    def _block(self, name: str, adds: list[fx.Node]) -> BlockInfo:
        calls = [k for k in self._scopes if _CALL_SUFFIX.sub('', k) == name]
        if len(calls) > 1:
            return BlockInfo(name, False, f'called {len(calls)} times (shared '
                             'weights): removing it changes every call')
        region = self._scopes[name]
        rset = set(region)
        inputs = {a for n in region for a in n.all_input_nodes
                  if a not in rset and a.op != 'get_attr'}
        outputs = [n for n in region if any(u not in rset for u in n.users)]
        info = BlockInfo(name, False)
        if len(inputs) != 1 or len(outputs) != 1:
            info.reason = (f'{len(inputs)} tensor inputs and {len(outputs)} '
                           'outputs (a removable unit has one of each)')
            return info
        (x_in,), (x_out,) = tuple(inputs), outputs
        info.input_node, info.output_node = x_in.name, x_out.name
        info.in_shape, info.out_shape = _shape(x_in) or (), _shape(x_out) or ()
        add = adds[-1]
        info.add_node = add.name

        def identity_path(n):
            # the block input, or a residual add of this block on it
            if n is x_in:
                return True
            return n in rset and _residual_add(n) and any(
                identity_path(a) for a in n.args[:2]
                if isinstance(a, fx.Node))

        a, b = add.args[:2]
        anc = {a: _ancestors(a, rset), b: _ancestors(b, rset)}
        ident = identity_path(a) or identity_path(b)
        if ident:
            short, branch = (a, b) if identity_path(a) else (b, a)
        else:  # the shortcut: the path with fewer modules, then fewer ops
            short, branch = sorted((a, b), key=lambda n: (
                len(self._modules_of(anc[n])), len(anc[n])))
        mods = self._modules_of(anc[short])
        branch_mods = self._modules_of(anc[branch] - anc[short])
        info.shortcut_modules, info.branch_modules = mods, branch_mods
        info.shortcut_node = short.name
        info.can_keep_shortcut = True
        if mods:
            info.reason = (f'projection shortcut through {mods}: input '
                           f'{list(info.in_shape)} -> output '
                           f'{list(info.out_shape)}; use '
                           "mode='keep_shortcut' to drop only the branch")
        elif not ident:
            ops = sorted(str(n.target) for n in anc[short]
                         if n.op != 'placeholder')
            info.reason = (f'shortcut is not the block input (it goes '
                           f"through {ops}); use mode='keep_shortcut' to "
                           'drop only the branch')
        elif info.in_shape != info.out_shape:
            info.reason = (f'output shape {list(info.out_shape)} differs from '
                           f'input shape {list(info.in_shape)}')
        else:
            info.removable = True
        return info

    @staticmethod
    def _modules_of(node_set) -> list[str]:
        return sorted({n.target for n in node_set if n.op == 'call_module'})

    def shortcut_module(self, name: str, share: bool = False
                        ) -> fx.GraphModule:
        """The block with its residual branch cut: shortcut + post-add ops.

        Args:
            name: A block with ``can_keep_shortcut``.
            share: Use the model's own shortcut modules (same Parameter
                objects, so an optimizer built before the cut still trains
                them) instead of copies.

        Returns:
            A ``GraphModule`` taking the block input; its submodules are
            the model's shortcut modules (e.g. a downsampling conv + BN),
            copied unless ``share``, under their original qualified names.
        """
        info = self.blocks[name]
        if not info.can_keep_shortcut:
            raise ValueError(f'block {name!r}: {info.reason}')
        by_name = {n.name: n for n in self.gm.graph.nodes}
        region = self._scopes[name]
        x_in, add = by_name[info.input_node], by_name[info.add_node]
        short = by_name[info.shortcut_node]
        graph = fx.Graph()
        env = {x_in: graph.placeholder('x')}
        for n in region:
            if n is add:  # the residual add now passes the shortcut on
                env[n] = env[short]
                continue
            env[n] = graph.node_copy(n, lambda m: env[m])
        graph.output(env[by_name[info.output_node]])
        new = fx.GraphModule(self.gm, graph, 'ShortcutOnly')
        new.graph.eliminate_dead_code()  # the residual branch
        new.recompile()
        new.delete_all_unused_submodules()
        return new if share else copy.deepcopy(new)


def find_blocks(model: nn.Module,
                example_inputs: torch.Tensor | Sequence[torch.Tensor],
                leaf_modules: Iterable[type | str] = ()) -> BlockAnalysis:
    """Residual blocks of ``model`` (removable or not, with reasons).

    Args:
        model: The model.
        example_inputs: Example input(s) for tracing and shapes.
        leaf_modules: Extra leaf modules for the tracer.

    Returns:
        A :class:`BlockAnalysis`; ``.blocks`` maps names to
        :class:`BlockInfo`, ``.removable`` lists the removable ones.
    """
    return BlockAnalysis(model, example_inputs, leaf_modules)


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    owner, _, attr = name.rpartition('.')
    setattr(model.get_submodule(owner) if owner else model, attr, new)


def remove_blocks(model: nn.Module, names: Iterable[str],
                  analysis: BlockAnalysis | None = None,
                  example_inputs: torch.Tensor | Sequence[torch.Tensor]
                  | None = None,
                  mode: str = 'identity', inplace: bool = False) -> nn.Module:
    """Replace residual blocks with identity (or with their shortcut).

    Args:
        model: The model.
        names: Blocks to remove.
        analysis: ``find_blocks(model, ...)`` (computed from
            ``example_inputs`` when not given).
        example_inputs: Needed when ``analysis`` is None.
        mode: ``'identity'``: only removable blocks, replaced by
            ``nn.Identity``; ``'keep_shortcut'``: removable blocks become
            ``nn.Identity`` and blocks with a projection shortcut keep only
            the shortcut path.
        inplace: Modify ``model`` instead of a deep copy.

    Returns:
        The shallower model (``model`` itself when ``inplace``).

    Raises:
        ValueError: A name is not a block, or is not removable in ``mode``
            (the message carries the block's reason).
    """
    if mode not in ('identity', 'keep_shortcut'):
        raise ValueError(f"mode must be 'identity' or 'keep_shortcut', got "
                         f'{mode!r}')
    if analysis is None:
        if example_inputs is None:
            raise ValueError('remove_blocks needs analysis or example_inputs')
        analysis = find_blocks(model, example_inputs)
    names = list(dict.fromkeys(names))
    replacements = {}
    for name in names:
        info = analysis.blocks.get(name)
        if info is None:
            raise ValueError(f'{name!r} is not a residual block (known: '
                             f'{list(analysis.blocks)})')
        if info.removable:
            replacements[name] = nn.Identity()
        elif mode == 'keep_shortcut' and info.can_keep_shortcut:
            # in place: keep the shortcut's parameters (optimizer state)
            replacements[name] = analysis.shortcut_module(name,
                                                          share=inplace)
        else:
            raise ValueError(f'block {name!r} is not removable: {info.reason}')
    new = model if inplace else copy.deepcopy(model)
    for name, rep in replacements.items():
        _set_module(new, name, rep)
    return new
