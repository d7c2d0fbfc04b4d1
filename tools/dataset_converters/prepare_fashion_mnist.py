"""Place Fashion-MNIST under ``data/fashion_mnist/`` from Debian's package.

The data come from the Debian package ``dataset-fashion-mnist`` (gzip IDX
files under /usr/share/datasets/fashion-mnist). If it is missing and we are
root with apt available, it is installed; otherwise we stop and say what to
run. There is no network download path. Files are checked (IDX magic, shape,
sample counts 60000/10000, exact size) and written atomically, so a corrupt
or truncated file is reported, never half-copied.

Usage:
    python tools/dataset_converters/prepare_fashion_mnist.py [--out data/fashion_mnist]
"""
import argparse
import gzip
import os
import shutil
import struct
import subprocess
import sys
import tempfile

DEBIAN_PACKAGE = 'dataset-fashion-mnist'
DEBIAN_DIR = '/usr/share/datasets/fashion-mnist'
# name -> (IDX type code 0x08 = uint8, number of dims, samples)
FILES = {
    'train-images-idx3-ubyte': (3, 60000),
    'train-labels-idx1-ubyte': (1, 60000),
    't10k-images-idx3-ubyte': (3, 10000),
    't10k-labels-idx1-ubyte': (1, 10000),
}


class DataError(RuntimeError):
    """The dataset cannot be obtained or is corrupt."""


def check_idx(path: str, ndim: int, samples: int | None = None) -> tuple:
    """Validate an uncompressed IDX file and return its shape.

    Args:
        path: File to check.
        ndim: Expected number of dimensions (3 images, 1 labels).
        samples: Expected first dimension, or None to accept any.

    Raises:
        DataError: naming the file and what is wrong with it.
    """
    size = os.path.getsize(path)
    with open(path, 'rb') as f:
        header = f.read(4 + 4 * ndim)
    if len(header) < 4 + 4 * ndim:
        raise DataError(f'{path}: truncated IDX header ({size} bytes)')
    zero, dtype, nd = struct.unpack('>HBB', header[:4])
    if zero != 0 or dtype != 0x08 or nd != ndim:
        raise DataError(f'{path}: not a uint8 IDX file with {ndim} dims '
                        f'(magic {header[:4].hex()})')
    shape = struct.unpack('>' + 'I' * ndim, header[4:])
    if samples is not None and shape[0] != samples:
        raise DataError(f'{path}: {shape[0]} samples, expected {samples}')
    n = 1
    for d in shape:
        n *= d
    expected = 4 + 4 * ndim + n
    if size != expected:
        raise DataError(f'{path}: {size} bytes, expected {expected} for shape '
                        f'{shape} (truncated or corrupt file)')
    return shape


def ensure_debian_package(src: str) -> None:
    """Install the Debian package if its directory is missing."""
    if os.path.isdir(src):
        return
    install = (f'apt-get update && apt-get install -y {DEBIAN_PACKAGE}')
    if src != DEBIAN_DIR:
        raise DataError(f'source folder {src} does not exist')
    if shutil.which('apt-get') is None or os.geteuid() != 0:
        raise DataError(
            f'Fashion-MNIST not found at {src}. Install the Debian package '
            f'as root: `sudo sh -c "{install}"`, then re-run `make data`.')
    print(f'[prepare_fashion_mnist] installing {DEBIAN_PACKAGE} with apt-get',
          flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND='noninteractive')
    for cmd in (['apt-get', 'update', '-q'],
                ['apt-get', 'install', '-y', '-q', DEBIAN_PACKAGE]):
        proc = subprocess.run(cmd, env=env)
        if proc.returncode != 0:
            raise DataError(f'`{" ".join(cmd)}` failed ({proc.returncode}); '
                            f'install {DEBIAN_PACKAGE} by hand: {install}')
    if not os.path.isdir(src):
        raise DataError(f'{DEBIAN_PACKAGE} installed but {src} is missing')


def _find_source(src: str, name: str) -> str:
    for candidate in (os.path.join(src, name + '.gz'), os.path.join(src, name)):
        if os.path.exists(candidate):
            return candidate
    raise DataError(f'{src} has no {name}(.gz)')


def prepare(src: str = DEBIAN_DIR, out: str = 'data/fashion_mnist') -> dict:
    """Decompress and verify the four IDX files into ``out``.

    Already valid files in ``out`` are kept (the step is idempotent).

    Returns:
        ``{file name: shape}`` of the four files.
    """
    os.makedirs(out, exist_ok=True)
    shapes = {}
    for name, (ndim, samples) in FILES.items():
        dst = os.path.join(out, name)
        if os.path.exists(dst):
            try:
                shapes[name] = check_idx(dst, ndim, samples)
                continue
            except DataError as err:
                print(f'[prepare_fashion_mnist] replacing bad file: {err}')
        ensure_debian_package(src)
        path = _find_source(src, name)
        fd, tmp = tempfile.mkstemp(dir=out, prefix=f'.{name}.')
        try:
            with os.fdopen(fd, 'wb') as fout:
                opener = gzip.open if path.endswith('.gz') else open
                try:
                    with opener(path, 'rb') as fin:
                        shutil.copyfileobj(fin, fout, 1 << 20)
                except (OSError, EOFError) as err:
                    raise DataError(f'{path}: cannot decompress ({err})') from err
            shapes[name] = check_idx(tmp, ndim, samples)
            os.chmod(tmp, 0o644)  # mkstemp creates 0600
            os.replace(tmp, dst)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return shapes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--src', default=DEBIAN_DIR,
                        help='folder with the (gzip) IDX files')
    parser.add_argument('--out', default='data/fashion_mnist')
    args = parser.parse_args(argv)
    try:
        shapes = prepare(args.src, args.out)
    except DataError as err:
        print(f'[prepare_fashion_mnist] ERROR: {err}', file=sys.stderr)
        return 1
    for name, shape in shapes.items():
        print(f'[prepare_fashion_mnist] {name}: {shape}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
