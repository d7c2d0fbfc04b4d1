"""The reliability suite's malicious pickle and in-process tool calls
(tests/reliability/ and the ``evil`` fixture of tests/conftest.py)."""
import http.server
import os


class Payload:
    """Unpickling this runs ``touch MARKER`` (a ``__reduce__`` payload)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """A file server handler that does not log requests."""

    def log_message(self, *args):
        pass


def tool_args(e, work):
    """``--work-dir`` below the ``evil`` fixture's folder and tiny data."""
    from helpers import tiny_cfg_options
    return ['--work-dir', str(e.tmp / work), *tiny_cfg_options(e.data)]


def train_main(argv):
    """tools/train.py in this process."""
    from tools.train import main
    main(argv)


def eval_main(argv):
    """tools/test.py in this process."""
    from tools.test import main
    main(argv)
