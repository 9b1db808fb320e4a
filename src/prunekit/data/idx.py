"""IDX files (the MNIST/Fashion-MNIST format), gzip-compressed or not, fully validated."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import PrunekitError

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
           0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | Path, expect_ndim: int | None = None) -> np.ndarray:
    """Read an IDX file; raises ``PrunekitError`` naming the file on any corruption."""
    path = Path(path)
    if not path.is_file():
        raise PrunekitError(f"data file not found: {path}")
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise PrunekitError(f"{path}: corrupt or truncated file ({type(e).__name__}: {e})") from None
    if len(raw) < 4:
        raise PrunekitError(f"{path}: too short to be an IDX file ({len(raw)} bytes)")
    zero, dtype_code, ndim = raw[0] << 8 | raw[1], raw[2], raw[3]
    if zero != 0 or dtype_code not in _DTYPES or ndim == 0:
        raise PrunekitError(f"{path}: wrong IDX magic number 0x{raw[:4].hex()} (not an IDX file)")
    if expect_ndim is not None and ndim != expect_ndim:
        raise PrunekitError(f"{path}: expected {expect_ndim}-dimensional IDX data, header says {ndim}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise PrunekitError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_DTYPES[dtype_code])
    need = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    have = len(raw) - header
    if have != need:
        raise PrunekitError(f"{path}: header says {dims} ({need} bytes of data) but the file holds {have} bytes")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzip-compressed IDX file (used to build the bundled subset)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.GzipFile(str(path), "wb", compresslevel=9, mtime=0) as f:
        f.write(header + array.tobytes())
