"""ONNX export: verified against PyTorch, dynamic batch, metadata embedded + sidecar, masked -> shrunk, errors."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import pytest
import torch

from conftest import run_cli, run_cli_subprocess
from prunekit.data import iterate_batches
from prunekit.errors import VerificationError
from prunekit.saved import load


def _real_batch(bundle, n=24):
    x, _ = next(iterate_batches(bundle, "test", n, train=False))
    return x


@pytest.fixture(scope="module")
def shrunk_onnx(shrunk_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "shrunk.onnx"
    rc, so, se = run_cli("export", "--model", shrunk_model_dir, "--out", out, "--json")
    assert rc == 0, se
    return out, json.loads(so)


def test_export_is_verified_and_embeds_metadata(shrunk_onnx, shrunk_model_dir):
    path, res = shrunk_onnx
    assert res["format"] == "onnx" and res["exporter"] == "dynamo" and res["opset"] == 18
    assert res["max_abs_diff"] is not None and res["max_abs_diff"] <= 1e-4
    assert res["verified_batches"] == [1, 3]
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [18]
    # dynamic batch axis, fixed C/H/W
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].HasField("dim_value")
    assert [d.dim_value for d in dims[1:]] == [1, 28, 28]
    # everything inference needs, embedded
    spec = load(shrunk_model_dir).spec
    props = {p.key: p.value for p in proto.metadata_props}
    doc = json.loads(props["prunekit"])
    assert doc["class_names"] == spec.class_names and json.loads(props["class_names"]) == spec.class_names
    assert doc["input"] == {"size": [28, 28], "channels": 1, "mean": spec.input.mean, "std": spec.input.std,
                            "resize": None}
    assert doc["arch"] == "mobilenet_v1" and props["arch"] == "mobilenet_v1"
    assert doc["precision"] == "fp32" and doc["prunekit_version"] == props["prunekit_version"]
    assert json.loads(props["mean"]) == spec.input.mean and json.loads(props["std"]) == spec.input.std
    # no exporter debug metadata (stack traces with local paths) left on nodes
    assert all(len(n.metadata_props) == 0 for n in proto.graph.node)
    # sidecar: same metadata + the file's hash
    side = json.loads((path.parent / (path.name + ".json")).read_text())
    assert side["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert side["class_names"] == spec.class_names and side["input"] == doc["input"]


def test_onnxruntime_matches_pytorch_on_real_images_any_batch(shrunk_onnx, shrunk_model_dir, bundled):
    from prunekit.inference import load_runtime

    path, _ = shrunk_onnx
    ort_rt, torch_rt = load_runtime(path), load_runtime(shrunk_model_dir)
    for n in (1, 7, 24):
        x = _real_batch(bundled, n)
        got, ref = ort_rt.predict_logits(x), torch_rt.predict_logits(x)
        assert got.shape == (n, 10)
        assert np.abs(got - ref).max() <= 1e-4


def test_masked_model_is_exported_shrunk_with_the_masked_function(pruned_model_dir, tmp_path, bundled):
    from prunekit.inference import load_runtime

    out = tmp_path / "pruned.onnx"
    rc, so, se = run_cli("export", "--model", pruned_model_dir, "--out", out)
    assert rc == 0, se
    assert "shrunk form" in so and "verified vs PyTorch" in so
    masked = load(pruned_model_dir)
    assert masked.pruner is not None
    x = _real_batch(bundled, 16)
    with torch.no_grad():
        ref = masked.model.eval()(x).numpy()  # masks applied
    got = load_runtime(out).predict_logits(x)
    assert np.abs(got - ref).max() <= 1e-4
    # physically smaller: fewer weights than the dense architecture
    n_weights = sum(int(np.prod(i.dims)) for i in onnx.load(str(out)).graph.initializer)
    dense_params = sum(p.numel() for p in masked.model.parameters())
    assert n_weights < 0.6 * dense_params
    assert json.loads(out.with_name(out.name + ".json").read_text())["info"]["shrunk_from_masks"] is True


def test_legacy_exporter_is_verified_too(shrunk_model_dir, tmp_path):
    out = tmp_path / "legacy.onnx"
    rc, so, se = run_cli("export", "--model", shrunk_model_dir, "--out", out, "--exporter", "legacy", "--json")
    assert rc == 0, se
    res = json.loads(so)
    assert res["exporter"] == "legacy" and res["max_abs_diff"] <= 1e-4


def test_an_older_opset_is_the_opset_in_the_file(shrunk_model_dir, tmp_path):
    """The dynamo exporter writes opset 18 and, when converting down fails, logs a traceback and keeps 18: the file
    claimed opset 17 and held 18. Now auto uses the legacy exporter below 18 and the file holds what was asked."""
    import onnx

    from prunekit.deploy.onnx import opset_of

    out = tmp_path / "o17.onnx"
    rc, so, se = run_cli("export", "--model", shrunk_model_dir, "--out", out, "--opset", "17", "--json")
    assert rc == 0 and "Traceback" not in se, se
    res = json.loads(so)
    assert res["opset"] == 17 and res["exporter"] == "legacy" and "below the dynamo exporter" in res["legacy_reason"]
    assert opset_of(onnx.load(str(out))) == 17
    rc, _, se = run_cli("export", "--model", shrunk_model_dir, "--out", tmp_path / "d17.onnx", "--opset", "17",
                        "--exporter", "dynamo")
    assert rc == 2 and "writes opset 18 or newer, not 17" in se and not (tmp_path / "d17.onnx").exists()


def test_verification_failure_exits_2_and_keeps_existing_output(shrunk_model_dir, tmp_path, monkeypatch):
    """A wrong export (simulated: the exporter adds 0.5 to every logit) is caught by the automatic check.

    The corruption changes the outputs whatever the weights are (corrupting a weight does not: on some machines
    the briefly trained fixture has dead channels whose weights do not reach the output)."""
    import prunekit.deploy.onnx as ox

    real_clean = ox._clean

    def corrupting_clean(proto):
        real_clean(proto)
        out = proto.graph.output[0].name
        for n in proto.graph.node:  # rename the producer's output and add 0.5 on the way to the graph output
            n.output[:] = [f"{o}_raw" if o == out else o for o in n.output]
        proto.graph.initializer.append(onnx.numpy_helper.from_array(np.array(0.5, dtype=np.float32), "half"))
        proto.graph.node.append(onnx.helper.make_node("Add", [f"{out}_raw", "half"], [out]))

    monkeypatch.setattr(ox, "_clean", corrupting_clean)
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous export")
    rc, so, se = run_cli("export", "--model", shrunk_model_dir, "--out", out, "--overwrite", "--exporter", "legacy")
    assert rc == 2
    assert "verification failed" in se and "max abs diff" in se
    assert len(se.strip().splitlines()) == 1 and "Traceback" not in se
    assert out.read_bytes() == b"previous export"
    assert not (tmp_path / "m.onnx.json").exists()
    assert not list(tmp_path.glob(".m.onnx.*"))  # no temporary leftovers

    # the library raises the dedicated error type
    from prunekit.deploy import DeployMeta, export_onnx

    loaded = load(shrunk_model_dir)
    with pytest.raises(VerificationError):
        export_onnx(loaded.model, DeployMeta.from_spec(loaded.spec, "onnx"), tmp_path / "x.onnx", exporter="legacy")
    assert not (tmp_path / "x.onnx").exists()


def test_export_errors_are_one_line(shrunk_model_dir, shrunk_onnx, tmp_path):
    path, _ = shrunk_onnx
    before = path.read_bytes()
    rc, so, se = run_cli("export", "--model", shrunk_model_dir, "--out", path)
    assert rc == 2 and "already exists" in se and len(se.strip().splitlines()) == 1
    assert path.read_bytes() == before
    rc, so, se = run_cli("export", "--model", tmp_path / "nope", "--out", tmp_path / "a.onnx")
    assert rc == 2 and "not found" in se
    # a suffix that the runtimes would load with another loader (or never load) is refused up front
    rc, so, se = run_cli("export", "--model", shrunk_model_dir, "--format", "onnx", "--out", tmp_path / "a.ts")
    assert rc == 2 and "suffix of the torchscript format" in se
    rc, so, se = run_cli("export", "--model", shrunk_model_dir, "--format", "torchscript", "--out", tmp_path / "a.pt")
    assert rc == 2 and "never loads .pt files" in se
    assert not list(tmp_path.glob("a.*"))
    pt = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(1)}, pt)
    # in a fresh process: exit code 2, one line, no traceback
    r = run_cli_subprocess("export", "--model", pt, "--out", tmp_path / "b.onnx")
    assert r.returncode == 2, r.stderr
    assert "pickled checkpoints are not loaded" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "b.onnx").exists()
