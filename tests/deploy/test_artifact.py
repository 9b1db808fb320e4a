"""Choosing the deploy artifact: the rule on given measurements, then end to end with an int8 model made slower
(or faster) than its fp32 model for real, so that nothing depends on this machine's int8 speed."""

from __future__ import annotations

import json
import time

import pytest

from conftest import run_cli
from prunekit.deploy.artifact import FP32, INT8, OBJECTIVES, Candidate, choose, choose_confirmed


def cands(int8_ms=0.110, fp32_ms=0.103, int8_top1=89.9, fp32_top1=90.0, int8_ips=9000.0, fp32_ips=10000.0):
    return (Candidate(FP32, "m.onnx", 1000, fp32_top1, fp32_ms, fp32_ips),
            Candidate(INT8, "m.int8.onnx", 300, int8_top1, int8_ms, int8_ips))


def test_slower_int8_is_never_the_default_artifact():
    c = choose(*cands(int8_ms=0.110, fp32_ms=0.103))  # the AMD EPYC numbers
    assert c.choice == FP32 and c.path == "m.onnx"
    assert "int8 is slower at batch 1: 0.110 ms vs 0.103 ms fp32" in c.reason
    assert c.int8_speedup_b1 == pytest.approx(0.103 / 0.110)


def test_faster_int8_within_tolerance_is_chosen():
    c = choose(*cands(int8_ms=0.40, fp32_ms=0.70))
    assert c.choice == INT8 and c.path == "m.int8.onnx"
    assert "int8 is 1.75x faster at batch 1" in c.reason and "drop +0.10 pt" in c.reason


def test_within_noise_keeps_fp32_and_says_so():
    c = choose(*cands(int8_ms=0.100, fp32_ms=0.103), min_speedup=1.05)
    assert c.choice == FP32 and "within noise" in c.reason
    assert choose(*cands(int8_ms=0.100, fp32_ms=0.103), min_speedup=1.0).choice == INT8


def test_accuracy_tolerance_overrides_speed():
    c = choose(*cands(int8_ms=0.2, fp32_ms=0.7, int8_top1=89.0), tolerance=0.5)
    assert c.choice == FP32 and "loses 1.00 top-1 points" in c.reason
    assert choose(*cands(int8_ms=0.2, fp32_ms=0.7, int8_top1=89.0), tolerance=1.0).choice == INT8


def test_objectives():
    # throughput: img/s at the throughput batch decides, not batch 1
    c = choose(*cands(int8_ms=0.2, fp32_ms=0.1, int8_ips=20000, fp32_ips=10000), "throughput", throughput_batch=32)
    assert c.choice == INT8 and "2.00x faster at batch 32" in c.reason
    assert choose(*cands(int8_ms=0.05, fp32_ms=0.1, int8_ips=5000), "throughput").choice == FP32
    # size: the smaller file, and a slower int8 is said plainly
    c = choose(*cands(int8_ms=0.110, fp32_ms=0.103), "size")
    assert c.choice == INT8 and "3.3x smaller" in c.reason and "int8 is slower at batch 1" in c.reason
    assert choose(*cands(int8_top1=80.0), "size").choice == FP32
    # forced
    c = choose(*cands(int8_ms=0.110, fp32_ms=0.103, int8_top1=80.0), "int8")
    assert c.choice == INT8 and "int8 is slower" in c.reason and "drop +10.00 pt" in c.reason
    assert choose(*cands(int8_ms=0.01), "fp32").choice == FP32
    assert choose(cands()[0], None, int8_note="guard gave up").reason == "no int8 model: guard gave up"
    assert set(OBJECTIVES) == {"latency", "throughput", "size", "fp32", "int8"}


def _confirm(first, again, objective="latency", **kw):
    """choose_confirmed on given first and second timings; returns (choice, second, number of re-timings)."""
    calls = []

    def retime():
        calls.append(1)
        return cands(**again)

    choice, second = choose_confirmed(*cands(**first), retime, objective, throughput_batch=32, **kw)
    return choice, second, len(calls)


def test_an_int8_win_must_hold_when_timed_again():
    # deploy_quick_zen5's 28x28 pruned model: 1.08x faster in the decision, 0.87x when the table timed it again
    c, second, n = _confirm({"int8_ms": 0.072, "fp32_ms": 0.077}, {"int8_ms": 0.091, "fp32_ms": 0.080})
    assert n == 1 and c.choice == FP32 and c is second and c.int8_speedup_b1 == pytest.approx(0.080 / 0.091)
    assert c.reason.startswith("int8 looked 1.07x faster at batch 1 but not when timed again: int8 is slower at "
                               "batch 1: 0.091 ms vs 0.080 ms fp32")
    c, _, _ = _confirm({"int8_ms": 0.072, "fp32_ms": 0.077}, {"int8_ms": 0.076, "fp32_ms": 0.077})
    assert c.choice == FP32 and "not when timed again: int8 and fp32 are within noise" in c.reason
    # confirmed: int8, with the first timing's figures and both ratios in the reason (the note stays last)
    c, second, n = _confirm({"int8_ms": 0.40, "fp32_ms": 0.70}, {"int8_ms": 0.42, "fp32_ms": 0.69}, int8_note="N")
    assert n == 1 and c.choice == INT8 and second.choice == INT8 and c.int8_speedup_b1 == pytest.approx(1.75)
    assert c.reason.startswith("int8 is 1.75x faster at batch 1") and c.reason.endswith("; 1.64x when timed again; N")
    # throughput: the throughput batch is re-timed and decides
    c, _, n = _confirm({"int8_ips": 20000, "fp32_ips": 10000}, {"int8_ips": 10100, "fp32_ips": 10000}, "throughput")
    assert n == 1 and c.choice == FP32 and c.reason.startswith("int8 looked 2.00x faster at batch 32 but not when")


def test_the_reason_says_when_the_other_batch_size_points_the_other_way():
    # deploy_quick_zen5's 224x224 pruned model, fully int8 at batch 32 vs a batch-1 pick that loses throughput
    c = choose(*cands(int8_ms=0.40, fp32_ms=0.70, int8_ips=900, fp32_ips=1000), throughput_batch=32)
    assert c.choice == INT8 and c.reason.endswith(
        "; but int8 is slower at batch 32: 900 img/s vs 1,000 img/s fp32 (1.11x slower) (quantize.objective="
        "throughput would keep fp32)")
    c = choose(*cands(int8_ms=0.110, fp32_ms=0.103, int8_ips=29000, fp32_ips=10000), throughput_batch=32)
    assert c.choice == FP32 and c.reason.endswith(
        "fp32 kept; int8 is 2.90x faster at batch 32 (29,000 img/s vs 10,000 img/s fp32) (quantize.objective="
        "throughput would choose int8)")
    c = choose(*cands(int8_ms=0.40, fp32_ms=0.30, int8_ips=20000, fp32_ips=10000), "throughput", throughput_batch=32)
    assert c.choice == INT8 and "but int8 is slower at batch 1" in c.reason and "objective=latency" in c.reason
    # nothing to add when both batch sizes agree, or one was not measured, or it is within noise
    for kw in ({"int8_ms": 0.40, "fp32_ms": 0.70, "int8_ips": 20000}, {"int8_ms": 0.40, "fp32_ms": 0.70, "int8_ips": None},
               {"int8_ms": 0.40, "fp32_ms": 0.70, "int8_ips": 9800}, {"int8_ms": 0.110, "fp32_ms": 0.103}):
        assert "quantize.objective=" not in choose(*cands(**kw), throughput_batch=32).reason


def test_nothing_is_timed_again_unless_int8_wins_on_speed():
    for first, objective in (({"int8_ms": 0.110, "fp32_ms": 0.103}, "latency"),  # fp32 already
                             ({"int8_ms": 0.2, "fp32_ms": 0.7, "int8_top1": 80.0}, "latency"),  # accuracy decides
                             ({"int8_ms": 0.2, "fp32_ms": 0.7}, "size"), ({"int8_ms": 0.2, "fp32_ms": 0.7}, "int8"),
                             ({"int8_ms": 0.2, "fp32_ms": 0.7}, "fp32")):
        c, second, n = _confirm(first, {"int8_ms": 9.0}, objective)
        assert n == 0 and second is None and c == choose(*cands(**first), objective, throughput_batch=32)


@pytest.fixture
def slow(monkeypatch):
    """Make ONNX Runtime inference of one precision 2 ms slower (real wall time, measured by the real timer)."""
    from prunekit.inference.runtime import OnnxRuntime

    run = OnnxRuntime._run

    def which(precision):
        def _run(self, x):
            if self.precision == precision:
                time.sleep(0.002)
            return run(self, x)

        monkeypatch.setattr(OnnxRuntime, "_run", _run)

    return which


def _quantize(fp32_model, tmp_path, *extra):
    out = tmp_path / "m.int8.onnx"
    rc, so, se = run_cli("quantize", "--model", fp32_model, "--data", "bundled", "--calib-samples", "128",
                         "--eval-samples", "300", "--repeats", "5", "--throughput-batch", "4", "--tolerance", "5",
                         "--fp32-prefix", "0", "--out", out, *extra)  # mixed-precision variants: test_mixed.py
    assert rc == 0, se
    return out, so


def test_a_slower_int8_model_is_not_deployed(fp32_model, tmp_path, slow):
    slow("int8")
    out, so = _quantize(fp32_model, tmp_path)
    last = so.strip().splitlines()[-1]
    assert last.startswith(f"deploy: {FP32} ({fp32_model})") and "int8 is slower at batch 1" in last
    assert out.is_file()  # both files are kept
    _, js = _quantize(fp32_model, tmp_path, "--overwrite", "--json")
    res = json.loads(js)
    lat = res["latency"]
    assert set(lat) == {FP32, INT8} and set(lat[INT8]) == {"1", "4"}
    assert lat[INT8]["1"]["p50_ms"] > lat[FP32]["1"]["p50_ms"] + 1.5  # the 2 ms were measured
    d = res["deploy"]
    assert d["choice"] == FP32 and d["int8_speedup_b1"] < 1 and d["objective"] == "latency"
    # the size objective ships int8 anyway and says that it is slower
    _, js = _quantize(fp32_model, tmp_path, "--overwrite", "--json", "--objective", "size")
    d = json.loads(js)["deploy"]
    assert d["choice"] == INT8 and "int8 is slower" in d["reason"]


def test_a_faster_int8_model_is_deployed(fp32_model, tmp_path, slow):
    slow("fp32")
    out, so = _quantize(fp32_model, tmp_path)
    last = so.strip().splitlines()[-1]
    assert last.startswith(f"deploy: {INT8} ({out})") and "faster at batch 1" in last
    assert "x when timed again" in last  # the win held in a second timing
