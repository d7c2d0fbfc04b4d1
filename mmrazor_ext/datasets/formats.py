"""Validating readers for the raw dataset formats: IDX and CIFAR pickles.

* :func:`read_idx` checks an (uncompressed) IDX file's magic, number of
  dimensions and exact size before reading it, so a truncated, padded or
  wrong-type file is an error naming the file, not a shape error deep in
  a data pipeline.
* :func:`load_cifar_pickle` reads a CIFAR python batch with a restricted
  unpickler that resolves only the numpy constructors the format needs; a
  file referring to anything else (``os.system`` ...) is refused, and
  nothing from it runs. This holds with ``verify_md5=False`` too.
"""
from __future__ import annotations

import io
import os
import pickle
import struct

import numpy as np

__all__ = ['DatasetFormatError', 'load_cifar_pickle', 'read_idx']


class DatasetFormatError(ValueError):
    """A dataset file is corrupt or of the wrong kind; names the file."""


# IDX type code -> numpy dtype (big-endian on disk)
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: '>i2', 0x0C: '>i4',
              0x0D: '>f4', 0x0E: '>f8'}


def read_idx(path: str, ndim: int, dtype=np.uint8) -> np.ndarray:
    """Read an IDX file after checking its header and size.

    Args:
        path: Uncompressed IDX file.
        ndim: Expected number of dimensions (3 for images, 1 for labels).
        dtype: Expected element type.

    Returns:
        The array, shape from the header.

    Raises:
        DatasetFormatError: Bad magic, type, dimensions or size.
    """
    size = os.path.getsize(path)
    with open(path, 'rb') as f:
        head = f.read(4)
        if len(head) < 4:
            raise DatasetFormatError(
                f'{path}: truncated IDX header ({size} bytes)')
        zero, code, nd = struct.unpack('>HBB', head)
        if zero != 0 or code not in _IDX_TYPES:
            raise DatasetFormatError(
                f'{path}: not an IDX file (magic {head.hex()})')
        if np.dtype(_IDX_TYPES[code]) != np.dtype(dtype) or nd != ndim:
            raise DatasetFormatError(
                f'{path}: IDX of {np.dtype(_IDX_TYPES[code]).name} with {nd} '
                f'dims, expected {np.dtype(dtype).name} with {ndim} (magic '
                f'{head.hex()})')
        dims = f.read(4 * nd)
        if len(dims) < 4 * nd:
            raise DatasetFormatError(
                f'{path}: truncated IDX header ({size} bytes)')
        shape = struct.unpack('>' + 'I' * nd, dims)
        count = int(np.prod(shape, dtype=np.int64))
        itemsize = np.dtype(_IDX_TYPES[code]).itemsize
        expected = 4 + 4 * nd + count * itemsize
        if size != expected:
            raise DatasetFormatError(
                f'{path}: {size} bytes, expected {expected} for shape '
                f'{shape} (truncated or corrupt file)')
        data = np.frombuffer(f.read(), dtype=_IDX_TYPES[code])
    return data.reshape(shape).astype(dtype, copy=False)


def _frombuffer(buf, dtype, shape, order):
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order)


def _reconstruct(subtype, shape, dtype):
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f'array subtype {subtype!r}')
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _encode(obj, encoding='utf-8'):
    return obj.encode(encoding) if isinstance(obj, str) else bytes(obj)


# What a CIFAR python batch may refer to: numpy arrays (protocols 2-5, numpy
# 1.x and 2.x module paths) and bytes re-pickled by Python 3 at protocol 2.
# Each resolves to a local, side-effect-free function or class.
_CIFAR_GLOBALS = {
    ('numpy.core.multiarray', '_reconstruct'): _reconstruct,
    ('numpy._core.multiarray', '_reconstruct'): _reconstruct,
    ('numpy.core.numeric', '_frombuffer'): _frombuffer,
    ('numpy._core.numeric', '_frombuffer'): _frombuffer,
    ('numpy', 'ndarray'): np.ndarray,
    ('numpy', 'dtype'): np.dtype,
    ('_codecs', 'encode'): _encode,
}


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return _CIFAR_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f'{module}.{name}') from None


def load_cifar_pickle(path: str) -> dict:
    """Unpickle a CIFAR python batch without running code from it.

    Args:
        path: ``data_batch_N``, ``test_batch`` or ``batches.meta``.

    Returns:
        The batch dict (keys decoded to ``str``).

    Raises:
        DatasetFormatError: The file refers to a global the format does not
            use (it is refused, nothing is executed) or is not a pickle.
    """
    with open(path, 'rb') as f:
        data = f.read()
    try:
        obj = _CifarUnpickler(io.BytesIO(data), encoding='latin1').load()
    except pickle.UnpicklingError as err:
        raise DatasetFormatError(
            f'{path}: refused: the pickle refers to {err}, which CIFAR '
            'batches never contain (only numpy arrays, lists, numbers and '
            'strings); the file was not executed. Replace it with a clean '
            'copy.') from None
    except Exception as err:  # noqa: BLE001 - any parse error names the file
        raise DatasetFormatError(
            f'{path}: not a CIFAR python batch ({type(err).__name__}: '
            f'{err})') from None
    if not isinstance(obj, dict):
        raise DatasetFormatError(
            f'{path}: holds a {type(obj).__name__}, expected a dict')
    return {k.decode('latin1') if isinstance(k, bytes) else k: v
            for k, v in obj.items()}
