"""Sparsity helpers: an Amba config and reading masks from checkpoints."""
import torch


def amba_cfg(**kw):
    """An ``AmbaLevelPruneScheduler`` sparsity config for 1x28x28 inputs,
    ``kw`` overriding its scheduler kwargs."""
    kwargs = dict(total_iters=9, sparsity_table=[30, 50, 70],
                  no_prune_keyword='', no_prune_layer='', prun_algo=1,
                  do_sparse_analysis=False, default_input_shape=[1, 1, 28, 28],
                  output_dir=None, save_dir=None)
    kwargs.update(kw)
    return dict(mask_generator=dict(type='NormalMaskGenerator'),
                fake_sparse=dict(type='FakeSparse'),
                scheduler=dict(type='AmbaLevelPruneScheduler', kwargs=kwargs))


def load(path):
    """A (sparse stage) checkpoint's dict, weights only."""
    return torch.load(path, map_location='cpu', weights_only=True)


def masks(state_dict):
    """The fake-sparse masks of a state dict."""
    return {k: v for k, v in state_dict.items()
            if k.endswith('weight_fake_sparse.mask')}
