"""NVIDIA Ampere 2:4 structured sparsity (the behaviour of NVIDIA ASP).

Only layers whose weight shape the sparse tensor cores accept are pruned
(``out % 8 == 0`` and ``in % 16 == 0``, ungrouped); the others are listed in
the log. In every group of 4 consecutive input-channel weights the 2 largest
magnitudes are kept (``m4n2_1d``). After every optimizer step the masks are
written into the weights again, so the stored weights stay 2:4.

``allow_permutation`` first searches, per layer whose input comes from a
single-consumer conv (-> BN) (-> ReLU) chain, an input-channel permutation
that raises the magnitude the 2:4 mask keeps, and applies it physically to
the producer's output channels (and BN) and the layer's input channels, so
the network computes the same function. Kept magnitude before / after is
logged and stored in ``permutation_report``.
"""

import torch
import torch.fx as fx
from torch import nn

from mmrazor_ext.registry import SPARSE_SCHEDULERS

from .base_scheduler import BaseScheduler, layer_leaves, note, resolve_leaf_modules
from .config import Arg, check_non_negative, one_of
from .mask_generators import kept_magnitude_nm, nm_eligible, nm_mask
from .sparse_modules import dense_weight


def _groups(module: nn.Module) -> int:
    return getattr(module, 'groups', 1)


@SPARSE_SCHEDULERS.register_module()
class AmpereScheduler(BaseScheduler):
    """2:4 sparsity on eligible layers, kept through every optimizer step.

    Keyword Args:
        mask_calculator: Only ``'m4n2_1d'``.
        allow_recompute_mask: Keep the dense weights and recompute the masks
            from them after every optimizer step (pruned weights may come
            back); False fixes the masks and zeroes pruned weights.
        allow_permutation: Search input-channel permutations first.
        verbosity: 0 silent, 1 summary, 2 per layer.
        no_prune_keyword / no_prune_layer: Layers kept dense.
    """

    ARGS = {
        **BaseScheduler.ARGS,
        'mask_calculator': Arg((str,), 'm4n2_1d', one_of('m4n2_1d')),
        'allow_recompute_mask': Arg((bool,), False),
        'allow_permutation': Arg((bool,), False),
        'verbosity': Arg((int,), 0, check_non_negative),
        'permutation_iters': Arg((int,), 200, check_non_negative,
                                 'swap trials per layer of the permutation search'),
    }
    N, M = 2, 4

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.permutation_report: dict[str, tuple[float, float]] = {}

    def layer_filter(self, name, module):
        reason = super().layer_filter(name, module)
        if reason is None and not nm_eligible(dense_weight(module).shape,
                                              _groups(module)):
            shape = tuple(dense_weight(module).shape)
            reason = f'shape {shape} not 2:4 eligible (out%8, in%16, groups=1)'
        return reason

    def prepare_sparse_model(self, model, leaf_module=None, concrete_args=None,
                             init_masks=True, example_inputs=None):
        model = super().prepare_sparse_model(model, leaf_module, concrete_args,
                                             init_masks=False,
                                             example_inputs=example_inputs)
        if self.cfg['verbosity'] >= 1 or self.skipped:
            note(f'AmpereScheduler: 2:4 on {len(self.layers)} layer(s); '
                 f'not eligible / skipped: {sorted(self.skipped) or "none"}')
        if init_masks:
            self.compute_masks()
        return model

    @torch.no_grad()
    def compute_masks(self) -> None:
        """(Permute, then) compute the 2:4 masks from the current weights and
        zero the pruned weights."""
        if self.cfg['allow_permutation'] and not self.permutation_report:
            self.search_permutations()
        for name, layer in self.layers.items():
            layer.weight_fake_sparse.set_mask(
                nm_mask(dense_weight(layer), self.N, self.M))
            if self.cfg['verbosity'] >= 2:
                note(f'AmpereScheduler: {name} {tuple(dense_weight(layer).shape)}')
        if not self.cfg['allow_recompute_mask']:
            self.apply_masks_to_weights()
        self._masks_ready = True

    def update(self, cur_iter: int, enter_stage: bool = True) -> None:
        super().update(cur_iter)
        if not getattr(self, '_masks_ready', False):
            self.compute_masks()

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        if self.cfg['allow_recompute_mask']:
            for layer in self.layers.values():
                layer.weight_fake_sparse.set_mask(
                    nm_mask(dense_weight(layer), self.N, self.M))
        else:
            self.apply_masks_to_weights()

    def state_dict(self):
        state = super().state_dict()
        state['masks_ready'] = bool(getattr(self, '_masks_ready', False))
        state['permutation_report'] = {
            k: [float(a), float(b)] for k, (a, b) in self.permutation_report.items()}
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self._masks_ready = bool(state.get('masks_ready', False))
        self.permutation_report = {
            k: tuple(v) for k, v in state.get('permutation_report', {}).items()}

    # --- permutation search ------------------------------------------------
    def _producer_chains(self) -> dict[str, list[str]]:
        """``{consumer layer: [producer conv, optional bn]}`` for 2:4 layers fed
        by a single-consumer conv (-> BN) (-> ReLU) chain."""
        from mmrazor_ext.graph import trace_model
        leaves, _ = resolve_leaf_modules(self.model, self.leaf_module)
        gm = trace_model(self.model, leaf_modules=leaves + layer_leaves(self.model),
                         concrete_args=getattr(self, 'concrete_args', None),
                         example_inputs=getattr(self, 'example_inputs', None))
        out = {}
        for node in gm.graph.nodes:
            if node.op != 'call_module' or node.target not in self.layers:
                continue
            chain, cur = [], node.args[0] if node.args else None
            ok = True
            while isinstance(cur, fx.Node):
                if len(cur.users) != 1:
                    ok = False
                    break
                if cur.op == 'call_module':
                    m = self.model.get_submodule(cur.target)
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        chain.insert(0, cur.target)
                        cur = cur.args[0]
                        continue
                    if isinstance(m, (nn.ReLU, nn.ReLU6, nn.Identity)):
                        cur = cur.args[0]
                        continue
                    if isinstance(m, nn.Conv2d) and _groups(m) == 1:
                        chain.insert(0, cur.target)
                        break
                    ok = False
                    break
                fn = getattr(cur.target, '__name__', cur.target)
                if cur.op in ('call_function', 'call_method') and \
                        fn in ('relu', 'relu_'):
                    cur = cur.args[0]
                    continue
                ok = False
                break
            if ok and chain and isinstance(self.model.get_submodule(chain[0]),
                                           nn.Conv2d):
                out[node.target] = chain
        return out

    @torch.no_grad()
    def _search(self, weight: torch.Tensor, iters: int) -> torch.Tensor:
        """Greedy pair-swap search of an input-channel permutation.

        A swap only changes the two groups of 4 it touches, so each trial
        re-scores those 8 columns instead of the whole weight.
        """
        m, n = self.M, self.N
        # rows = (out, kernel positions), columns = input channels
        cols = weight.detach().abs().movedim(1, -1).reshape(-1, weight.shape[1])
        cin = cols.shape[1]
        perm = torch.arange(cin)
        gen = torch.Generator().manual_seed(0)

        def group_score(idx):
            return float(torch.topk(cols[:, idx], n, dim=1).values.sum())

        for _ in range(iters):
            i, j = torch.randint(0, cin, (2,), generator=gen).tolist()
            gi, gj = i // m, j // m
            if gi == gj:
                continue
            a = perm[gi * m:(gi + 1) * m].clone()
            b = perm[gj * m:(gj + 1) * m].clone()
            old = group_score(a) + group_score(b)
            a2, b2 = a.clone(), b.clone()
            a2[i % m], b2[j % m] = b[j % m], a[i % m]
            if group_score(a2) + group_score(b2) > old + 1e-9:
                perm[gi * m:(gi + 1) * m] = a2
                perm[gj * m:(gj + 1) * m] = b2
        return perm

    @torch.no_grad()
    def search_permutations(self) -> dict[str, tuple[float, float]]:
        """Search and physically apply input-channel permutations."""
        try:
            chains = self._producer_chains()
        except Exception as e:
            note(f'AmpereScheduler: permutation search skipped ({e})', 'WARNING')
            return {}
        total_before = total_after = 0.0
        for name, chain in chains.items():
            layer = self.layers[name]
            w = dense_weight(layer)
            before = kept_magnitude_nm(w, self.N, self.M)
            perm = self._search(w, self.cfg['permutation_iters'])
            after = kept_magnitude_nm(w[:, perm], self.N, self.M)
            if after <= before:
                after = before
            else:
                self._apply_permutation(name, chain, perm)
            self.permutation_report[name] = (before, after)
            total_before += before
            total_after += after
        if chains:
            note(f'AmpereScheduler: permutation search on {len(chains)} layer(s): '
                 f'kept magnitude {total_before:.4f} -> {total_after:.4f}')
        return self.permutation_report

    def _apply_permutation(self, name: str, chain: list[str],
                           perm: torch.Tensor) -> None:
        consumer = self.layers[name]
        w = dense_weight(consumer)
        w.copy_(w[:, perm])
        for target in chain:
            m = self.model.get_submodule(target)
            if isinstance(m, nn.Conv2d):
                pw = dense_weight(m)
                pw.copy_(pw[perm])
                if m.bias is not None:
                    m.bias.copy_(m.bias[perm])
                fs = getattr(m, 'weight_fake_sparse', None)
                if fs is not None:
                    fs.mask.copy_(fs.mask[perm])
            else:  # BatchNorm
                for attr in ('weight', 'bias', 'running_mean', 'running_var'):
                    t: torch.Tensor | None = getattr(m, attr, None)
                    if t is not None:
                        t.copy_(t[perm])
