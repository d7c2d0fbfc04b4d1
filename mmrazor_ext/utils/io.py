"""Atomic file writes: a reader never sees a half-written file.

Every file the project writes for users (JSON results, CSV tables, pruned
models, checkpoints of its own) goes through :func:`atomic_write`: the data
is written to a temp file in the destination folder, then renamed over the
destination, so a kill at any moment leaves the old file or the new one.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from typing import Any


def atomic_write(path: str, write: Callable[[str], Any]) -> str:
    """Call ``write(tmp_path)``, then rename the temp file onto ``path``.

    Args:
        path: Destination; its folder is created if missing.
        write: Writes the whole content to the path it is given.

    Returns:
        ``path``.
    """
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix='.tmp_', suffix='.part')
    os.close(fd)
    try:
        write(tmp)
        # mkstemp creates 0600 files; give the result the usual mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def atomic_write_text(path: str, text: str) -> str:
    """Write ``text`` (UTF-8) atomically."""
    def write(p):
        with open(p, 'w', encoding='utf-8') as f:
            f.write(text)
    return atomic_write(path, write)


def atomic_write_json(path: str, data: Any, indent: int | None = 1,
                      **kwargs) -> str:
    """Dump ``data`` as JSON atomically (``kwargs`` go to ``json.dump``)."""
    def write(p):
        with open(p, 'w', encoding='utf-8') as f:
            json.dump(data, f, indent=indent, **kwargs)
    return atomic_write(path, write)


def atomic_torch_save(path: str, obj: Any) -> str:
    """``torch.save(obj)`` atomically."""
    import torch
    return atomic_write(path, lambda p: torch.save(obj, p))
