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
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(PrunekitError, match="not a directory|cannot create"):
        check_writable_dir(f / "sub")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.geteuid() != 0:  # root ignores permissions
            with pytest.raises(PrunekitError, match="not writable"):
                check_writable_dir(ro)
    finally:
        ro.chmod(0o700)


def test_atomic_files_get_normal_permissions(tmp_path):
    write_json(tmp_path / "p.json", {})
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "p.json").stat().st_mode & 0o777 == 0o666 & ~mask
