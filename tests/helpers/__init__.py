"""Helpers shared by the tests (not test modules: pytest collects only
``test_*.py``). ``tests/`` is on ``sys.path`` (``pythonpath`` in
pyproject.toml), so every test imports them as ``helpers`` /
``helpers.<topic>`` whatever its folder; fixtures live in
``tests/conftest.py``.

- this module: repository paths, the interpreter, running a tool,
  ``--cfg-options`` for tiny runs, loading a tool module by path, and
  listing a folder;
- :mod:`helpers.data`: tiny data sets on disk and random batches;
- :mod:`helpers.models`: small models and ``randomise`` (BN statistics);
- :mod:`helpers.amc`, :mod:`helpers.sparsity`, :mod:`helpers.reliability`:
  what the tests of one topic in several folders share.
"""
import importlib.util
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
"""The repository root: tools, configs and scripts are found from it, and
:func:`run_tool` runs there."""

PY = sys.executable
"""The interpreter running the tests (the project's virtual environment)."""

BASELINE = os.path.join(ROOT,
                        'configs/baselines/resnet20_1xb128_fashionmnist.py')
"""The ResNet-20 / Fashion-MNIST baseline config most tests start from."""


def tiny_cfg_options(data_root: str, max_epochs: int = 1,
                     batch_size: int = 8) -> list:
    """``--cfg-options`` that make a Fashion-MNIST config run in seconds."""
    return [
        '--cfg-options',
        f'train_dataloader.dataset.data_root={data_root}',
        f'val_dataloader.dataset.data_root={data_root}',
        f'test_dataloader.dataset.data_root={data_root}',
        f'train_dataloader.batch_size={batch_size}',
        'train_dataloader.num_workers=0',
        'train_dataloader.persistent_workers=False',
        'val_dataloader.num_workers=0',
        'val_dataloader.persistent_workers=False',
        'test_dataloader.num_workers=0',
        'test_dataloader.persistent_workers=False',
        f'train_cfg.max_epochs={max_epochs}',
        f'param_scheduler.end={max_epochs}',
        'default_hooks.logger.interval=1',
    ]


def run_tool(args: list, timeout: int = 300, env: dict | None = None,
             cwd: str = ROOT) -> subprocess.CompletedProcess:
    """Run a command from the repository root; fail with its output."""
    full_env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    full_env.update(env or {})
    proc = subprocess.run(args, cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(
            f'{" ".join(args)} exited {proc.returncode}\n'
            f'--- stdout ---\n{proc.stdout[-4000:]}\n'
            f'--- stderr ---\n{proc.stderr[-6000:]}')
    return proc


def load_tool(path: str):
    """Import a script of the repository (``tools/analysis/x.py``, relative
    to :data:`ROOT`) as a module, for the folders that are no packages."""
    spec = importlib.util.spec_from_file_location(
        os.path.splitext(os.path.basename(path))[0], os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tree(path) -> list:
    """Every file below ``path`` (a ``pathlib.Path``) with its size (to
    assert that nothing was written)."""
    return sorted((str(p.relative_to(path)), p.stat().st_size)
                  for p in path.rglob('*') if p.is_file())
