"""ProbMask (Zhou et al., 2021): sparsity under a global budget.

Every weight has a keep probability (``ProbMaskFakeSparse.scores``, learned
with the weights). After each iteration the scores of all layers are
projected together onto ``sum p = (1 - s(t)) * N`` (so layers compete for one
global budget), the relaxation temperature is annealed geometrically from
``init_temp`` to ``final_temp``, and the budget follows the cubic ramp
``s(t) = s_f * (1 - (1 - u)^3)``, ``u`` the progress between ``ramp_start``
and ``ramp_end`` (fractions of ``total_iters``). The hard eval mask keeps the
globally top-scored ``(1 - s(t)) * N`` weights, so it meets the target
exactly at the end of the ramp.
"""
import torch

from mmrazor_ext.registry import SPARSE_SCHEDULERS

from .base_scheduler import BaseScheduler
from .config import Arg, SparsityConfigError, check_fraction, check_positive
from .sparse_modules import dense_weight


def _check_total(v):
    return None if v is None else check_positive(v)


@SPARSE_SCHEDULERS.register_module()
class ProbMaskScheduler(BaseScheduler):
    """Global keep-probability projection + temperature + cubic ramp.

    Keyword Args:
        total_iters: Training iterations (None: SparsityHook uses max_iters).
        target_sparsity: Final global sparsity fraction in [0, 1).
        init_temp / final_temp: Temperature of the relaxed Bernoulli mask.
        ramp_start / ramp_end: Ramp window as fractions of ``total_iters``.
        no_prune_keyword / no_prune_layer: Layers kept dense.
    """

    ARGS = {
        **BaseScheduler.ARGS,
        'total_iters': Arg((int, type(None)), None, _check_total),
        'target_sparsity': Arg((float,), check=check_fraction),
        'init_temp': Arg((float,), 1.0, check_positive),
        'final_temp': Arg((float,), 0.05, check_positive),
        'ramp_start': Arg((float,), 0.0, check_fraction),
        'ramp_end': Arg((float,), 0.75, check_positive),
    }
    default_mask_generator = 'ProbMaskGenerator'
    default_fake_sparse = 'ProbMaskFakeSparse'
    allowed_fake_sparse = ('ProbMaskFakeSparse',)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.cfg['ramp_start'] < self.cfg['ramp_end'] <= 1.0:
            raise SparsityConfigError(
                'scheduler.kwargs.ramp_end: need ramp_start < ramp_end <= 1, '
                f'got {self.cfg["ramp_start"]}, {self.cfg["ramp_end"]}')
        self.total_iters = self.cfg['total_iters']

    def extra_param_group(self) -> dict:
        # No weight decay on the keep probabilities: the projection onto the
        # global budget sets their scale.
        return {'weight_decay': 0.0}

    def current_sparsity(self, cur_iter: int) -> float:
        """Cubic ramp of the global sparsity budget."""
        total = self._total()
        t0, t1 = self.cfg['ramp_start'] * total, self.cfg['ramp_end'] * total
        u = min(max((cur_iter - t0) / max(t1 - t0, 1e-9), 0.0), 1.0)
        return self.cfg['target_sparsity'] * (1.0 - (1.0 - u) ** 3)

    def current_temperature(self, cur_iter: int) -> float:
        """Geometric annealing from ``init_temp`` to ``final_temp``."""
        u = min(max(cur_iter / self._total(), 0.0), 1.0)
        t0, t1 = self.cfg['init_temp'], self.cfg['final_temp']
        return t0 * (t1 / t0) ** u

    def _total(self) -> int:
        if self.total_iters is None:
            raise SparsityConfigError(
                'scheduler.kwargs.total_iters: needed by ProbMaskScheduler '
                '(None only with SparsityHook)')
        return self.total_iters

    @torch.no_grad()
    def update(self, cur_iter: int, enter_stage: bool = True) -> None:
        super().update(cur_iter)
        if not self.layers:
            return
        fss = [layer.weight_fake_sparse for layer in self.layers.values()]
        scores = [fs.scores for fs in fss]
        n = sum(s.numel() for s in scores)
        keep = (1.0 - self.current_sparsity(cur_iter)) * n
        self.mask_generator.project(scores, keep)
        weights = [dense_weight(layer) for layer in self.layers.values()]
        masks = self.mask_generator.hard_masks(scores, int(round(keep)), weights)
        temp = self.current_temperature(cur_iter)
        for fs, m in zip(fss, masks):
            fs.set_mask(m)
            fs.temperature.fill_(temp)

    def state_dict(self):
        state = super().state_dict()
        state['total_iters'] = self.total_iters
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        if state.get('total_iters') is not None:
            self.total_iters = int(state['total_iters'])
