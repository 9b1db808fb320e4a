"""TorchScript (.ts) and ExportedProgram (.pt2) export: verified, metadata embedded, dynamic batch, loadable by
`prunekit predict` with the same top-5 as the model directory."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_cli
from prunekit.data import iterate_batches
from prunekit.saved import load


@pytest.fixture(scope="module")
def exported(shrunk_model_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("ts")
    out = {}
    for fmt, name in (("torchscript", "m.ts"), ("exported-program", "m.pt2")):
        # the format comes from the suffix for one of them and is explicit for the other
        args = ("--format", fmt) if fmt == "torchscript" else ()
        rc, so, se = run_cli("export", "--model", shrunk_model_dir, "--out", d / name, "--json", *args)
        assert rc == 0, se
        out[fmt] = (d / name, json.loads(so))
    return out


@pytest.mark.parametrize("fmt", ["torchscript", "exported-program"])
def test_export_verified_with_metadata(exported, fmt, shrunk_model_dir, bundled):
    from prunekit.deploy import load_exported_program, load_torchscript

    path, res = exported[fmt]
    assert res["format"] == fmt and res["max_abs_diff"] is not None and res["max_abs_diff"] <= 1e-4
    assert res["verified_batches"] == [1, 3]
    module, text = (load_torchscript if fmt == "torchscript" else load_exported_program)(path)
    meta = json.loads(text)  # embedded via _extra_files / extra_files
    spec = load(shrunk_model_dir).spec
    assert meta["class_names"] == spec.class_names and meta["input"]["mean"] == spec.input.mean
    assert meta["format"] == fmt and meta["precision"] == "fp32" and meta["arch"] == "mobilenet_v1"
    assert json.loads((path.parent / (path.name + ".json")).read_text())["class_names"] == spec.class_names
    model = load(shrunk_model_dir).model.eval()
    for n in (1, 5, 32):  # any batch size
        x, _ = next(iterate_batches(bundled, "test", n, train=False))
        with torch.no_grad():
            assert (module(x) - model(x)).abs().max().item() <= 1e-4


def test_masked_model_torchscript_reproduces_masked_function(pruned_model_dir, tmp_path, bundled):
    from prunekit.deploy import load_torchscript

    out = tmp_path / "pruned.ts"
    rc, so, se = run_cli("export", "--model", pruned_model_dir, "--out", out)
    assert rc == 0, se
    assert "shrunk form" in so
    masked = load(pruned_model_dir).model.eval()
    module, _ = load_torchscript(out)
    x, _ = next(iterate_batches(bundled, "test", 16, train=False))
    with torch.no_grad():
        assert (module(x) - masked(x)).abs().max().item() <= 1e-4


def test_predict_same_top5_from_ts_pt2_and_directory(exported, shrunk_model_dir, bundled, tmp_path):
    paths = []
    for i in range(6):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(bundled.test.images[i, 0].numpy()).save(p)
        paths.append(p)
    tops = {}
    for key, model in (("dir", shrunk_model_dir), ("ts", exported["torchscript"][0]),
                       ("pt2", exported["exported-program"][0])):
        rc, so, se = run_cli("predict", *paths, "--model", model, "--json")
        assert rc == 0, se
        doc = json.loads(so)
        tops[key] = [[t["name"] for t in p["top"]] for p in doc["predictions"]]
        probs = np.array([[t["prob"] for t in p["top"]] for p in doc["predictions"]])
        tops[key + "_p"] = probs
    assert tops["ts"] == tops["dir"] and tops["pt2"] == tops["dir"]
    assert np.abs(tops["ts_p"] - tops["dir_p"]).max() < 1e-5
    assert all(len(t) == 5 for t in tops["dir"])


class _Payload:  # stands in for an object whose unpickling would run code
    pass


def test_pt2_with_pickled_payload_is_refused_before_loading(exported, tmp_path):
    """torch.export.load falls back to an unrestricted unpickler; prunekit checks the archive first."""
    import io
    import zipfile


    src, _ = exported["exported-program"]
    evil = tmp_path / "evil.pt2"
    buf = io.BytesIO()
    torch.save(_Payload(), buf)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(evil, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("sample_inputs/model.pt"):
                data = buf.getvalue()
            zout.writestr(item, data)
    rc, so, se = run_cli("predict", src.parent / "missing.png", "--model", evil)
    assert rc == 2 and "refusing to load" in se and len(se.strip().splitlines()) == 1
    cut = tmp_path / "cut.ts"
    cut.write_bytes(exported["torchscript"][0].read_bytes()[:3000])
    rc, so, se = run_cli("predict", src.parent / "missing.png", "--model", cut)
    assert rc == 2 and "not a readable TorchScript archive" in se and len(se.strip().splitlines()) == 1
