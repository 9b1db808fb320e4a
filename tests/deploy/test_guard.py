"""The accuracy guard on a model with a deliberately quantization-sensitive layer: a channel scaled by 1000 just
before the classifier (and the classifier's weights divided by 1000, so fp32 computes the same function) makes
per-tensor int8 scales wipe out every other feature. The guard must find that layer by measurement, keep it in
fp32 and meet the tolerance; without the guard (or with too small a budget) fp32 is deployed, and said."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from conftest import run_cli
from prunekit.deploy.guard import _nsr, _score, guard, weight_range

K = 1000.0


def make_sensitive(src, dst):
    m = onnx.load(str(src))
    g = m.graph
    gemm = next(n for n in g.node if n.op_type == "Gemm")
    inits = {i.name: i for i in g.initializer}
    w = numpy_helper.to_array(inits[gemm.input[1]]).copy()
    trans_b = next((a.i for a in gemm.attribute if a.name == "transB"), 0)
    scale = np.ones((1, w.shape[1] if trans_b else w.shape[0]), np.float32)
    scale[0, 0] = K
    if trans_b:
        w[:, 0] /= K
    else:
        w[0, :] /= K
    inits[gemm.input[1]].CopyFrom(numpy_helper.from_array(w, gemm.input[1]))
    g.initializer.append(numpy_helper.from_array(scale, "outlier_scale"))
    g.node.insert(list(g.node).index(gemm), helper.make_node("Mul", [gemm.input[0], "outlier_scale"], ["outlier_out"],
                                                             name="outlier_mul"))
    gemm.input[0] = "outlier_out"
    onnx.save(m, str(dst))  # metadata_props (input size, mean/std, classes) are kept
    return dst


@pytest.fixture(scope="module")
def sensitive(tiny_model_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("guard")
    rc, so, se = run_cli("export", "--model", tiny_model_dir, "--out", d / "m.onnx")
    assert rc == 0, se
    dst = make_sensitive(d / "m.onnx", d / "sensitive.onnx")
    from prunekit.inference import load_runtime

    x = np.random.default_rng(0).standard_normal((8, 1, 28, 28)).astype(np.float32)
    a, b = load_runtime(d / "m.onnx").predict_logits(x), load_runtime(dst).predict_logits(x)
    assert np.abs(a - b).max() < 1e-3  # the same function in fp32
    return dst


@pytest.fixture(scope="module")
def tol(sensitive, tmp_path_factory):
    """The tolerance the guard must meet: 0.5 pt above what int8 costs the same model without the outlier (on
    this CPU's int8 settings, e.g. 7-bit weights without VNNI, a briefly trained tiny model can lose 2-3 pt
    anyway), at least 0.5 pt. The outlier costs tens of points, so the test stays about the outlier."""
    res = _quantize(sensitive.with_name("m.onnx"), tmp_path_factory.mktemp("plain") / "m.int8.onnx", "--no-guard")
    return max(0.5, res["top1_drop"] + 0.5)


def _quantize(model, out, *extra):
    rc, so, se = run_cli("quantize", "--model", model, "--data", "bundled", "--calib-samples", "256",
                         "--eval-samples", "500", "--repeats", "3", "--throughput-batch", "2", "--out", out,
                         "--json", "--fp32-prefix", "0", *extra)  # the guard alone (test_mixed: the prefix)
    assert rc == 0, se
    return json.loads(so)


def test_guard_keeps_the_sensitive_layer_in_fp32(sensitive, tmp_path, tol):
    out = tmp_path / "s.int8.onnx"
    res = _quantize(sensitive, out, "--tolerance", str(tol))
    g = res["guard"]
    first = g["tries"][0]
    assert first["fp32_nodes"] == 0 and first["drop"] > 20 + tol  # fully int8 is broken ...
    assert g["ok"] and g["drop"] <= tol and len(g["tries"]) > 1  # ... and the guard repaired it
    assert "outlier_mul" in g["fp32_nodes"] and len(g["fp32_nodes"]) <= 2
    assert g["ranking"][0]["node"] == "outlier_mul"  # found by measurement: ranked first
    assert res["int8"]["top1"] == pytest.approx(g["top1"]) and res["top1_drop"] <= tol
    # the int8 file is the repaired one: the Mul gets fp32 inputs, the convolutions int8 weights
    q = onnx.load(str(out))
    prod = {o: n for n in q.graph.node for o in n.output}
    mul = next(n for n in q.graph.node if n.name == "outlier_mul")
    assert all(prod.get(i) is None or prod[i].op_type != "DequantizeLinear" for i in mul.input)
    assert sum(n.op_type == "DequantizeLinear" for n in q.graph.node) > 20
    info = json.loads(out.with_name(out.name + ".json").read_text())["info"]["quantization"]
    assert info["fp32_nodes"] == g["fp32_nodes"]
    assert "in fp32" in g["summary"] and "outlier_scale" in g["summary"]


def test_without_the_guard_fp32_is_deployed(sensitive, tmp_path, tol):
    out = tmp_path / "s.int8.onnx"
    res = _quantize(sensitive, out, "--no-guard", "--tolerance", str(tol))
    assert len(res["guard"]["tries"]) == 1 and res["top1_drop"] > 20
    d = res["deploy"]
    assert d["choice"] == "onnxruntime-fp32" and "loses" in d["reason"] and out.is_file()


def test_guard_gives_up_beyond_its_budget(sensitive, tmp_path, tol):
    res = _quantize(sensitive, tmp_path / "s.int8.onnx", "--max-fp32-layers", "1", "--tolerance", str(tol))
    g = res["guard"]  # the Mul alone in fp32 is not enough: the classifier still quantizes the outlier tensor
    assert not g["ok"] and [t["fp32_nodes"] for t in g["tries"]] == [0, 1]
    assert res["deploy"]["choice"] == "onnxruntime-fp32"
    assert "even with 1 layer in fp32" in res["deploy"]["reason"]


def test_per_channel_score_sees_what_a_tensor_snr_hides():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (16, 8))
    x[:, 0] *= K
    step = x.max() / 255
    y = np.round(x / step) * step  # per-tensor uint8: the small channels round to 0
    noise, signal = _nsr(x, y, 1)
    assert noise.sum() / signal.sum() < 1e-4  # whole-tensor: looks near perfect
    assert _score(noise, signal) > 0.8  # per channel: 7 of 8 channels destroyed
    assert _score(np.zeros(3), np.zeros(3)) == 0.0


def test_guard_loop_doubles_and_stops_at_the_budget():
    built = []

    def build(exclude):
        built.append(list(exclude))
        return tuple(exclude)

    ranking = [{"node": f"n{i}", "layer": f"l{i}", "score": 1.0 - i / 10} for i in range(10)]
    acc = {(): 50.0, ("n0",): 60.0, ("n0", "n1"): 70.0}
    g = guard(build, lambda p: acc.get(p, 89.8), 90.0, 0.5, 8, lambda p: ranking)
    assert built == [[], ["n0"], ["n0", "n1"], ["n0", "n1", "n2", "n3"]] and g.ok and g.fp32_layers[-1] == "l3"
    built.clear()
    g = guard(build, lambda p: 50.0 + len(p), 90.0, 0.5, 6, lambda p: ranking)
    assert [len(b) for b in built] == [0, 1, 2, 4, 6] and not g.ok and len(g.fp32_nodes) == 6


def test_8bit_weights_are_measured_before_any_layer_goes_fp32():
    """Where this CPU's settings chose 7-bit weights (reduce_range): when they lose more than the tolerance, the same
    model with 8-bit weights is measured and whichever loses less is kept."""
    built = []

    def build(rr):
        built.append(rr)
        return {"rr": rr}

    acc = {True: 97.0, False: 99.6}
    wr, m = weight_range(build, lambda p: acc[p["rr"]], 100.0, 0.5)
    assert built == [True, False] and wr.full_range and m == {"rr": False}
    assert (wr.drop_7bit, wr.drop_8bit) == pytest.approx((3.0, 0.4))
    assert wr.summary() == "7-bit weights lost 3.00 top-1 points (> tolerance 0.5), 8-bit weights 0.40: 8-bit " \
                           "weights kept" and wr.to_dict()["summary"] == wr.summary()
    built.clear()  # 8-bit no better: 7-bit stays
    wr, m = weight_range(build, lambda p: {True: 97.0, False: 96.0}[p["rr"]], 100.0, 0.5)
    assert built == [True, False] and not wr.full_range and m == {"rr": True} and "7-bit weights kept" in wr.summary()
    built.clear()  # within the tolerance: 8-bit is not even built
    wr, m = weight_range(build, lambda p: 99.8, 100.0, 0.5)
    assert built == [True] and not wr.full_range and wr.drop_8bit is None and m == {"rr": True}


def _reduce_range_of(proto) -> bool:
    """Whether an int8 model from Int8Builder.build was quantized with 7-bit weights (its metadata says)."""
    from prunekit.deploy.metadata import META_KEY

    meta = json.loads({p.key: p.value for p in proto.metadata_props}[META_KEY])
    return meta["info"]["quantization"]["reduce_range"]


def test_quantize_ships_8bit_weights_when_7bit_ones_lose(sensitive, tmp_path, monkeypatch):
    """End to end on an AVX2-class setting (7-bit weights) with 7-bit models made to lose 20 points at evaluation
    (real int8 accuracy varies by CPU): the 8-bit model is measured, kept, written and said; the guard then has
    nothing to repair. With --reduce-range given, nothing changes."""
    import prunekit.inference.runtime as runtime

    real = runtime.evaluate_runtime

    penalty = {True: 20.0, False: 0.0}  # top-1 points taken from models with / without reduce_range

    def evaluate(rt, *a, **k):
        ev = real(rt, *a, **k)
        q = (rt.meta.info or {}).get("quantization")
        return {**ev, "top1": ev["top1"] - penalty[q["reduce_range"]]} if q else ev

    monkeypatch.setattr(runtime, "evaluate_runtime", evaluate)
    plain = sensitive.with_name("m.onnx")
    out = tmp_path / "m.int8.onnx"
    res = _quantize(plain, out, "--cpu", "x86-avx2", "--tolerance", "5")
    w = res["weights"]
    assert w["full_range"] and w["drop_7bit"] > 15 and w["drop_8bit"] <= 5
    assert res["settings"]["reduce_range"] is False and "8-bit weights instead" in res["settings_reason"]
    info = json.loads(out.with_name(out.name + ".json").read_text())["info"]["quantization"]
    assert info["reduce_range"] is False and info["fp32_nodes"] == []
    assert len(res["guard"]["tries"]) == 1 and res["guard"]["drop"] == pytest.approx(w["drop_8bit"])
    assert res["top1_drop"] == pytest.approx(w["drop_8bit"])
    # the text output says it
    rc, so, se = run_cli("quantize", "--model", plain, "--data", "bundled", "--calib-samples", "256",
                         "--eval-samples", "500", "--repeats", "3", "--throughput-batch", "2", "--out", out,
                         "--overwrite", "--fp32-prefix", "0", "--cpu", "x86-avx2", "--tolerance", "5")
    assert rc == 0, se
    assert "weights: 7-bit weights lost" in so and "8-bit weights kept" in so
    # 8-bit weights worse still: the 7-bit model is kept, and everything says 7-bit (the last build was 8-bit); the
    # guard's builds with layers in fp32 use the kept model's 7-bit weights too
    from prunekit.deploy.quantize import Int8Builder

    builds, real_build = [], Int8Builder.build

    def spy(self, exclude=(), settings=None):
        proto = real_build(self, exclude, settings)
        builds.append((list(exclude), _reduce_range_of(proto)))
        return proto

    monkeypatch.setattr(Int8Builder, "build", spy)
    penalty[False] = 30.0
    res = _quantize(plain, out, "--cpu", "x86-avx2", "--tolerance", "5", "--overwrite", "--max-fp32-layers", "1")
    assert not res["weights"]["full_range"] and res["weights"]["drop_8bit"] > res["weights"]["drop_7bit"]
    assert [rr for ex, rr in builds if not ex] == [True, False]  # the two fully int8 models, 7-bit first
    assert [rr for ex, rr in builds if ex] and all(rr for ex, rr in builds if ex)  # the guard's: 7-bit
    assert res["settings"]["reduce_range"] is True and "8-bit weights instead" not in res["settings_reason"]
    assert json.loads(out.with_name(out.name + ".json").read_text())["info"]["quantization"]["reduce_range"] is True
    penalty[False] = 0.0
    # an explicit --reduce-range is the user's choice: not second-guessed (the guard repairs what it can)
    res = _quantize(plain, tmp_path / "r.int8.onnx", "--cpu", "x86-avx2", "--tolerance", "5", "--reduce-range")
    assert res["weights"] is None and res["settings"]["reduce_range"] is True
