import gzip
import struct

import numpy as np
import pytest

from prunekit.data import read_idx, write_idx
from prunekit.errors import PrunekitError


def test_roundtrip(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", a)
    assert np.array_equal(read_idx(tmp_path / "a.gz", expect_ndim=3), a)


def _write(path, raw, gz=True):
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)


@pytest.mark.parametrize("raw,msg", [
    (b"\x00\x00\x07\x01" + struct.pack(">I", 2) + b"\x01\x02", "wrong IDX magic"),
    (b"\x12\x34\x08\x01" + struct.pack(">I", 2) + b"\x01\x02", "wrong IDX magic"),
    (b"\x00\x00\x08\x01" + struct.pack(">I", 5) + b"\x01\x02", "header says"),
    (b"\x00\x00", "too short"),
    (b"\x00\x00\x08\x03" + struct.pack(">I", 1), "truncated IDX header"),
])
def test_corrupt_headers(tmp_path, raw, msg):
    p = tmp_path / "x.gz"
    _write(p, raw)
    with pytest.raises(PrunekitError, match=msg):
        read_idx(p)


def test_truncated_gzip_and_wrong_rank(tmp_path):
    a = np.zeros((10, 28, 28), np.uint8)
    write_idx(tmp_path / "a.gz", a)
    data = (tmp_path / "a.gz").read_bytes()
    (tmp_path / "t.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(PrunekitError, match="corrupt or truncated"):
        read_idx(tmp_path / "t.gz")
    with pytest.raises(PrunekitError, match="expected 1-dimensional"):
        read_idx(tmp_path / "a.gz", expect_ndim=1)
    (tmp_path / "notgz.gz").write_bytes(b"hello world, not gzip")
    with pytest.raises(PrunekitError, match="corrupt"):
        read_idx(tmp_path / "notgz.gz")
