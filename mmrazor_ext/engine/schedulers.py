"""Parameter schedulers whose state dicts load with ``weights_only=True``."""
from mmengine.optim.scheduler.lr_scheduler import OneCycleLR as _OneCycleLR

from mmrazor_ext.registry import PARAM_SCHEDULERS


@PARAM_SCHEDULERS.register_module()
class OneCycleLR(_OneCycleLR):
    """mmengine's ``OneCycleLR`` with a checkpoint-safe state dict.

    mmengine stores the bound method ``anneal_func`` in the state dict, which
    pickles the whole scheduler through ``builtins.getattr`` and cannot be
    loaded with ``weights_only=True``. Only the strategy name is stored here;
    the method is looked up again on load.
    """

    def __init__(self, *args, anneal_strategy: str = 'cos', **kwargs):
        total = kwargs.get('total_steps') or (
            kwargs.get('end', float('inf')) - kwargs.get('begin', 0))
        pct_start = kwargs.get('pct_start', 0.3)
        if total != float('inf') and pct_start * total < 2:
            # mmengine divides by zero when the warm-up phase has < 2 steps.
            raise ValueError(
                f'OneCycleLR: warm-up of pct_start={pct_start} x '
                f'total_steps={total} is under 2 iterations; train longer '
                'or use a larger pct_start / fewer processes.')
        super().__init__(*args, anneal_strategy=anneal_strategy, **kwargs)
        self.anneal_strategy = anneal_strategy

    def state_dict(self) -> dict:
        state = super().state_dict()
        state.pop('anneal_func', None)
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        state_dict.pop('anneal_func', None)
        super().load_state_dict(state_dict)
        self.anneal_func = (self._annealing_cos
                            if self.anneal_strategy == 'cos'
                            else self._annealing_linear)
