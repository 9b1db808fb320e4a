import os
import pickle

import pytest
import torch

from prunekit.errors import PrunekitError
from prunekit.io import atomic_write, check_writable_dir, read_json, torch_load, torch_save, write_json


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    p = tmp_path / "f.json"
    write_json(p, {"a": 1})
    with pytest.raises(RuntimeError), atomic_write(p, "w") as f:
        f.write("partial")
        raise RuntimeError("crash mid-write")
    assert read_json(p) == {"a": 1}
    assert [x.name for x in tmp_path.iterdir()] == ["f.json"]  # no temp file left behind


def test_torch_load_refuses_pickled_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "evil.pt"
    bad.write_bytes(pickle.dumps({"model": Evil()}))
    with pytest.raises(PrunekitError, match="refusing to load|could not be read"):
        torch_load(bad)
    assert not marker.exists()
    ok = tmp_path / "ok.pt"
    torch_save(ok, {"w": torch.ones(2), "step": 3})
    assert torch_load(ok)["step"] == 3


def test_nan_is_written_as_null(tmp_path):
    write_json(tmp_path / "x.json", {"v": float("nan")})
    assert read_json(tmp_path / "x.json") == {"v": None}


def test_unwritable_output_dir_is_reported_before_work(tmp_path):
    from conftest import read_only_dir

    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(PrunekitError, match="not a directory|cannot create"):
        check_writable_dir(f / "sub")
    with read_only_dir(tmp_path / "ro"), pytest.raises(PrunekitError, match="is not writable"):
        check_writable_dir(tmp_path / "ro")  # (as root too: the directory is immutable or mounted read-only)
    with read_only_dir(tmp_path / "ro2"), pytest.raises(PrunekitError, match="cannot create"):
        check_writable_dir(tmp_path / "ro2" / "run")
    assert not list((tmp_path / "ro").iterdir()) and not list((tmp_path / "ro2").iterdir())


def test_atomic_files_get_normal_permissions(tmp_path):
    write_json(tmp_path / "p.json", {})
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "p.json").stat().st_mode & 0o777 == 0o666 & ~mask


def test_loading_is_refused_under_torch_older_than_2_6(tmp_path, monkeypatch):
    """torch.load(weights_only=True) could be bypassed before torch 2.6 (CVE-2025-32434): refuse to unpickle."""
    ok = tmp_path / "ok.pt"
    torch_save(ok, {"w": torch.zeros(2)})
    assert torch.equal(torch_load(ok)["w"], torch.zeros(2))
    for old in ("2.5.1", "2.4.0+cpu", "1.13.1"):
        monkeypatch.setattr(torch, "__version__", old)
        with pytest.raises(PrunekitError, match=r"torch.load is only safe from torch 2.6 on"):
            torch_load(ok)
    monkeypatch.setattr(torch, "__version__", "2.6.0+cu124")
    assert torch.equal(torch_load(ok)["w"], torch.zeros(2))
