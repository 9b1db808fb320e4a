"""`prunekit bench`: every field present and consistent, side-by-side ratios, cache reuse, errors."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli, run_cli_subprocess
from prunekit.cost import profile
from prunekit.saved import load


@pytest.fixture(scope="module")
def result(tiny_model_dir, shrunk_model_dir, tmp_path_factory):
    cache = tmp_path_factory.mktemp("bench_cache")
    rc, so, se = run_cli("bench", "--model", tiny_model_dir, "--model", shrunk_model_dir, "--batch", "1,8",
                         "--threads", "1", "--repeats", "5", "--warmup", "1", "--cache-dir", cache, "--json")
    assert rc == 0, se
    return json.loads(so), cache


def test_bench_emits_all_fields(result, tiny_model_dir, shrunk_model_dir):
    res, cache = result
    m = res["machine"]
    for key in ("platform", "cpu", "logical_cores", "available_cores", "python", "torch", "onnxruntime", "prunekit"):
        assert m[key], key
    s = res["settings"]
    assert s["threads"] == 1 and s["batches"] == [1, 8] and s["latency_batch"] == 1 and s["throughput_batch"] == 8
    assert [x["path"] for x in res["models"]] == [str(tiny_model_dir), str(shrunk_model_dir)]
    for entry, d in zip(res["models"], (tiny_model_dir, shrunk_model_dir), strict=True):
        loaded = load(d)
        prof = profile(loaded.model, loaded.input_shape)
        assert entry["params"] == prof.params and entry["macs"] == prof.macs
        sizes = entry["sizes"]
        assert sizes["safetensors"] == (d / "model.safetensors").stat().st_size
        for k in ("onnx_fp32", "onnx_int8"):
            assert entry["files"][k].startswith(str(cache)) and sizes[k] > 0
        assert sizes["onnx_int8"] < sizes["onnx_fp32"]
        assert entry["calibration"] == "bundled Fashion-MNIST (train)"
        assert set(entry["runtimes"]) == {"pytorch_fp32", "ort_fp32", "ort_int8"}
        for rt in entry["runtimes"].values():
            assert set(rt) == {"1", "8"}
            for b, st in rt.items():
                assert st["batch"] == int(b) and st["runs"] == 5
                assert 0 < st["min_ms"] <= st["p50_ms"] <= st["p90_ms"]
                assert st["img_per_s"] == pytest.approx(int(b) / (st["p50_ms"] / 1e3))
        h = entry["headline"]
        assert h["ort_int8_p50_ms"] == entry["runtimes"]["ort_int8"]["1"]["p50_ms"]
        assert h["pytorch_fp32_img_per_s"] == entry["runtimes"]["pytorch_fp32"]["8"]["img_per_s"]
    # ratios of the second model relative to the first
    (r,) = res["ratios"]
    a, b = res["models"]
    assert r["params"] == pytest.approx(b["params"] / a["params"]) and r["params"] < 0.5
    assert r["size_onnx_int8"] == pytest.approx(b["sizes"]["onnx_int8"] / a["sizes"]["onnx_int8"])
    assert r["ort_fp32_p50_ms"] == pytest.approx(b["headline"]["ort_fp32_p50_ms"] / a["headline"]["ort_fp32_p50_ms"])


def test_bench_table_and_cache_reuse(result, tiny_model_dir, shrunk_model_dir):
    res, cache = result
    files = sorted(p for p in cache.rglob("*.onnx"))
    assert len(files) == 4
    mtimes = [p.stat().st_mtime_ns for p in files]
    rc, so, se = run_cli("bench", "--model", tiny_model_dir, "--model", shrunk_model_dir, "--batch", "1,2",
                         "--threads", "1", "--repeats", "3", "--warmup", "0", "--cache-dir", cache)
    assert rc == 0, se
    assert "exporting" not in se and "quantizing" not in se  # reused: nothing re-exported
    assert [p.stat().st_mtime_ns for p in files] == mtimes
    lines = so.splitlines()
    names = [m["name"] for m in res["models"]]
    assert lines[0].split() == ["metric", names[0], names[1], f"{names[1]}/{names[0]}"]
    text = "\n".join(lines)
    for label in ("params", "MACs", "model.safetensors", "ONNX fp32 file", "ONNX int8 file",
                  "PyTorch eager fp32 p50 @1 (ms)", "ONNX Runtime fp32 p90 @1 (ms)", "ONNX Runtime int8 @2 (img/s)"):
        assert label in text, label
    assert "machine:" in text and "threads 1" in text


def test_bench_errors(tmp_path, tiny_model_dir):
    f = tmp_path / "model.onnx"
    f.write_bytes(b"x")
    r = run_cli_subprocess("bench", "--model", f)
    assert r.returncode == 2 and "bench takes model directories" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    rc, so, se = run_cli("bench", "--model", tmp_path / "missing")
    assert rc == 2 and "not found" in se
    rc, so, se = run_cli("bench", "--model", tiny_model_dir, "--batch", "0,4")
    assert rc == 2 and "--batch" in se
