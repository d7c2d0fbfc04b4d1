"""Base of algorithms that wrap an ``architecture`` (as in MMRazor)."""
from __future__ import annotations

from mmengine.logging import print_log
from mmengine.model import BaseModel
from torch import nn

from mmrazor_ext.engine.checkpoint import safe_load
from mmrazor_ext.registry import MODELS


class ArchitectureAlgorithm(BaseModel):
    """Builds the architecture, shares its preprocessor, loads trained weights.

    Args:
        architecture: Model config (or module) the algorithm compresses.
        init_checkpoint: Trained weights of ``architecture`` (safe loader).
        data_preprocessor: Given to the architecture when its config has
            none (the Runner passes the config's top-level one).
        init_cfg: mmengine init config.
    """

    def __init__(self, architecture: dict | nn.Module,
                 init_checkpoint: str | None = None,
                 data_preprocessor: dict | None = None,
                 init_cfg: dict | None = None):
        if isinstance(architecture, dict):
            # One preprocessor for both, so the exported copy normalises
            # inputs exactly as the algorithm did.
            architecture = dict(architecture)
            if data_preprocessor is not None:
                architecture.setdefault('data_preprocessor', data_preprocessor)
            architecture = MODELS.build(architecture)
        super().__init__(data_preprocessor=architecture.data_preprocessor,
                         init_cfg=init_cfg)
        self.architecture = architecture
        self.init_checkpoint = init_checkpoint
        if init_checkpoint:
            state = safe_load(init_checkpoint)
            state = state.get('state_dict', state)
            # A checkpoint of another algorithm (e.g. an AutoSlim supernet)
            # stores the same network under ``architecture.``.
            prefix = 'architecture.'
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
            self.architecture.load_state_dict(state)
            print_log(f'loaded {init_checkpoint}', logger='current')

    def init_weights(self) -> None:
        # The Runner calls init_weights() after building the model; that
        # would re-initialise the architecture from its init_cfg and discard
        # the trained init_checkpoint loaded in __init__.
        if self.init_checkpoint:
            return
        super().init_weights()

    def forward(self, inputs, data_samples=None, mode: str = 'tensor'):
        return self.architecture(inputs, data_samples, mode)
