"""Shared fixtures: tiny Fashion-MNIST-format data, a tiny trained
baseline, and the reliability suite's malicious files. Helpers (paths,
``run_tool``, data makers, models) are in ``tests/helpers/``."""
import functools
import http.server
import os
import pickle
import shutil
import threading
from types import SimpleNamespace

import pytest
import torch

from helpers import BASELINE, PY, run_tool, tiny_cfg_options
from helpers.data import make_fmnist
from helpers.reliability import Payload, QuietHandler

# Tests run on 2 cores, often under pytest-xdist: one thread per process.
torch.set_num_threads(1)


@pytest.fixture(scope='session')
def tiny_fmnist(tmp_path_factory) -> str:
    """A data root with 64 train / 32 test images in Fashion-MNIST format."""
    return make_fmnist(str(tmp_path_factory.mktemp('fmnist')))


@pytest.fixture(scope='session')
def tiny_baseline(tmp_path_factory, tiny_fmnist) -> str:
    """ResNet-20 trained one epoch on ``tiny_fmnist`` through tools/train.py;
    the checkpoint path (shared by the algorithm and tool tests)."""
    wd = tmp_path_factory.mktemp('baseline')
    run_tool([PY, 'tools/train.py', BASELINE, '--work-dir', str(wd),
              *tiny_cfg_options(tiny_fmnist)])
    return str(wd / 'epoch_1.pth')


@pytest.fixture
def evil(tmp_path, monkeypatch, tiny_fmnist):
    """Malicious checkpoints on disk and on an HTTP server on 127.0.0.1
    (tests/reliability/)."""
    marker = tmp_path / 'EXECUTED'
    serve = tmp_path / 'serve'
    serve.mkdir()
    torch.save({'state_dict': {}, 'meta': Payload(marker)}, serve / 'evil.pth')
    torch.save({'state_dict': {}, 'meta': Payload(marker)},
               serve / 'legacy.pth', _use_new_zipfile_serialization=False)
    (serve / 'raw.pkl').write_bytes(pickle.dumps({'x': Payload(marker)}))
    server = http.server.ThreadingHTTPServer(
        ('127.0.0.1', 0), functools.partial(QuietHandler, directory=str(serve)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for var in ('NO_PROXY', 'no_proxy'):
        monkeypatch.setenv(var, '127.0.0.1,localhost')
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    monkeypatch.setenv('MMENGINE_HOME', str(tmp_path / 'mmengine_home'))
    os.makedirs(tmp_path / 'mmengine_home')
    shutil.copy(serve / 'evil.pth', tmp_path / 'mmengine_home' / 'evil.pth')
    url = f'http://127.0.0.1:{server.server_address[1]}/evil.pth'
    yield SimpleNamespace(marker=marker, dir=serve, url=url, tmp=tmp_path,
                          data=tiny_fmnist, monkeypatch=monkeypatch)
    server.shutdown()
    server.server_close()
