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
        for name, rt in entry["runtimes"].items():
            assert set(rt) == {"1", "8"}
            for b, st in rt.items():
                # ONNX Runtime: more runs when 5 take less than MIN_BLOCK_SECONDS per round
                assert st["batch"] == int(b) and (st["runs"] == 5 if name == "pytorch_fp32" else st["runs"] >= 5)
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


class _Live:
    """A stand-in for a loaded runtime that counts how many are alive at once."""

    alive = peak = 0
    log: list[str] = []

    def __init__(self, name):
        self.name = name
        _Live.alive += 1
        _Live.peak = max(_Live.peak, _Live.alive)
        _Live.log.append(name)

    def __del__(self):
        _Live.alive -= 1

    def run(self):
        assert _Live.alive == 1, "another runtime is alive while this one is timed"


def _factory(name):
    def load():
        rt = _Live(name)
        return rt.run

    return load


def test_alternating_timing_keeps_one_runtime_alive_at_a_time():
    """ONNX Runtime's idle sessions spin and take the timed session's cores: only one may be alive at a time,
    every round loads each in turn (order reversed every other round) and every run is timed."""
    from prunekit.inference.bench import time_alternating

    _Live.alive = _Live.peak = 0
    _Live.log = []
    times = time_alternating({"a": _factory("a"), "b": _factory("b")}, warmup=1, repeats=9, max_seconds=5.0)
    assert _Live.peak == 1 and _Live.alive == 0
    assert _Live.log == ["a", "b", "b", "a", "a", "b"]  # 3 rounds, alternating order
    # every run is timed: 9 at least, more for a model this fast (each block lasts MIN_BLOCK_SECONDS)
    assert all(len(v) >= 9 for v in times.values())


def test_a_runtime_in_a_reference_cycle_is_let_go_too_and_old_objects_are_not_rescanned():
    """A runtime that only the cycle collector frees is gone before the next is loaded; meanwhile the objects that
    existed before the rounds are frozen (each collection scans only what the rounds made: a full one took 0.43 s
    after a dynamo export), and thawed afterwards."""
    import gc

    from prunekit.inference.bench import alternating_rounds

    def cyclic(name):
        def load():
            rt = _Live(name)
            rt.me = rt  # freed by the cycle collector only
            return rt.run

        return load

    frozen = []

    def measure(run, r):
        run()
        frozen.append(gc.get_freeze_count())

    _Live.alive = _Live.peak = 0
    _Live.log = []
    alternating_rounds([cyclic("a"), cyclic("b")], 2, measure)
    assert _Live.peak == 1 and _Live.alive == 0 and _Live.log == ["a", "b", "b", "a"]
    assert min(frozen) > 1000 and gc.get_freeze_count() == 0


def test_a_block_of_runs_lasts_long_enough_for_a_fast_model():
    """50 runs of a 0.07 ms model are 3.5 ms of work, within one of this VM's slow phases: a block runs on until
    min_seconds have passed (and stops at max_seconds whatever repeats says)."""
    import time

    from prunekit.inference.bench import time_runs

    t0 = time.perf_counter()
    t = time_runs(lambda: None, warmup=0, repeats=5, max_seconds=1.0, min_seconds=0.05)
    assert len(t) > 5 and time.perf_counter() - t0 >= 0.05
    assert len(time_runs(lambda: time.sleep(0.002), warmup=0, repeats=5, max_seconds=1.0, min_seconds=0.0)) == 5
    t0 = time.perf_counter()
    t = time_runs(lambda: time.sleep(0.01), warmup=0, repeats=10**6, max_seconds=0.1, min_seconds=5.0)
    assert 3 <= len(t) < 30 and time.perf_counter() - t0 < 1.0


def test_latency_timer_times_whole_models_one_session_at_a_time():
    """The budget check's interleaved timing (Timer.interleaved_ms) loads one model at a time, too."""
    from prunekit.inference.latency import Timer

    class Fake(Timer):
        def factory(self, module, example):
            return _factory(str(module))

        def _round(self, run):
            run()
            return {"dense": 2.0, "small": 1.0}[_Live.log[-1]]

    _Live.alive = _Live.peak = 0
    _Live.log = []
    got = Fake("onnxruntime-fp32", 1, 1).interleaved_ms(["dense", "small"], None)
    assert got == [2.0, 1.0] and _Live.peak == 1 and len(_Live.log) == 6
