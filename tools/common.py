"""Helpers shared by the entry points in tools/ (not a library API)."""
import torch
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.registry import RUNNERS
from mmengine.runner import Runner


def adapt_to_device(cfg: Config) -> Config:
    """Make a config written for GPUs run where there is no CUDA device.

    gloo replaces nccl (and the process group is started here), DDP gets
    ``device_ids=None`` (CPU modules) and ``AmpOptimWrapper`` (CUDA only)
    falls back to fp32 with a warning.
    """
    if torch.cuda.is_available():
        return cfg
    cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})['backend'] = 'gloo'
    if cfg.get('launcher', 'none') != 'none':
        # mmengine's init_dist always calls torch.cuda.set_device; the Runner
        # skips it when a process group already exists, so start gloo here.
        import torch.distributed as dist
        if not dist.is_initialized():
            dist.init_process_group(backend='gloo')
        wrapper = cfg.get('model_wrapper_cfg') or dict(
            type='MMDistributedDataParallel')
        wrapper.setdefault('device_ids', None)
        wrapper.setdefault('broadcast_buffers', False)
        cfg.model_wrapper_cfg = wrapper
    optim = cfg.get('optim_wrapper')
    if optim is not None and optim.get('type') == 'AmpOptimWrapper':
        print_log('--amp needs a CUDA device; training in fp32 on CPU',
                  logger='current', level=30)
        optim.type = 'OptimWrapper'
        optim.pop('loss_scale', None)
    return cfg


def build_runner(cfg: Config) -> Runner:
    """Register the project's modules and build the Runner of ``cfg``."""
    from mmrazor_ext.registry import register_all_modules
    register_all_modules(init_default_scope=False)
    cfg = adapt_to_device(cfg)
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    from mmrazor_ext.engine.runner import Runner as RazorRunner
    return RazorRunner.from_cfg(cfg)
