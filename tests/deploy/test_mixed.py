"""int8 only where it is faster: the fp32-prefix variants, on given timings, then end to end with a fully int8
model made slower for real (so that nothing depends on this machine's int8 kernels)."""

from __future__ import annotations

import json
import time

import pytest

from conftest import run_cli
from prunekit.deploy.mixed import fastest_prefix, prefix_sizes, weighted_nodes

NODES = [(f"node_conv_{i}", f"layers.{i}.weight") for i in range(6)]


@pytest.mark.parametrize("n, top, want", [(10, 4, [1, 2, 4]), (10, 3, [1, 2, 3]), (10, 6, [1, 2, 4, 6]),
                                          (3, 4, [1, 2]), (2, 4, [1]), (1, 4, []), (10, 0, [])])
def test_prefix_sizes_double_and_leave_one_layer_in_int8(n, top, want):
    assert prefix_sizes(n, top) == want


def _search(times: dict[int, float], base_exclude=(), max_layers=4, nodes=NODES, min_speedup=1.05, again=None):
    """fastest_prefix with a fake builder (a model = the set of fp32 nodes) and fake timings per prefix size
    (``again``: those of the second timing, default the same)."""
    built, timed = [], []

    def build(exclude):
        built.append(list(exclude))
        return {"fp32": frozenset(exclude)}

    def time_ms(protos, with_fp32):
        timed.append(sorted(protos, key=int))
        assert with_fp32 == (len(timed) == 1)  # fp32 only in the first timing: the second compares two int8 files
        t = times if len(timed) == 1 or again is None else again
        return {**({"fp32": 9.0} if with_fp32 else {}), **{k: t[int(k)] for k in protos}}

    base = {"fp32": frozenset(base_exclude)}
    return fastest_prefix(build, time_ms, base, list(base_exclude), nodes, max_layers, min_speedup), built, timed


def test_the_fastest_prefix_is_kept():
    r, built, timed = _search({0: 1.0, 1: 0.8, 2: 0.7, 4: 0.9})
    assert built == [["node_conv_0"], ["node_conv_0", "node_conv_1"], [n for n, _ in NODES[:4]]]
    # one interleaved round over all variants, then a fresh one of the fastest against fully int8
    assert timed == [["0", "1", "2", "4"], ["0", "2"]]
    assert r.fp32_prefix == 2 and r.proto == {"fp32": frozenset({"node_conv_0", "node_conv_1"})}
    assert r.layers == ["layers.0.weight", "layers.1.weight"] and r.nodes == ["node_conv_0", "node_conv_1"]
    assert r.fp32_ms == 9.0 and [t["fp32_prefix"] for t in r.tried] == [0, 1, 2, 4]
    s = r.summary()
    assert s.startswith("keeping the first 2 layers in fp32 (layers.0.weight, layers.1.weight) made int8 1.43x")
    assert "(0.700 vs 1.000 ms, timed twice)" in s and r.to_dict()["summary"] == s


def test_a_win_that_the_second_timing_does_not_repeat_is_dropped():
    r, _, timed = _search({0: 1.0, 1: 0.8, 2: 0.7, 4: 0.9}, again={0: 1.0, 2: 0.98})
    assert timed == [["0", "1", "2", "4"], ["0", "2"]]
    assert r.fp32_prefix == 0 and r.proto == {"fp32": frozenset()} and r.layers == []
    assert r.confirm == {"fp32_prefix": 2, "p50_ms": 0.98, "fully_int8_ms": 1.0}
    assert "looked faster (0.700 vs 1.000 ms) but not when timed again (0.980 vs 1.000 ms" in r.summary()
    # the summary of a confirmed win quotes the second timing, not the lucky first one
    r, _, _ = _search({0: 1.0, 1: 0.8, 2: 0.7, 4: 0.9}, again={0: 1.0, 2: 0.9})
    assert r.fp32_prefix == 2 and "1.11x faster than fully int8 at batch 1 (0.900 vs 1.000 ms" in r.summary()


def test_within_noise_the_fewest_fp32_layers_win():
    assert _search({0: 1.0, 1: 0.72, 2: 0.70, 4: 0.69})[0].fp32_prefix == 1  # 0.72 <= 1.05 x 0.69
    assert _search({0: 1.0, 1: 0.80, 2: 0.70, 4: 0.69})[0].fp32_prefix == 2


def test_a_rejected_variant_says_why():
    r, _, _ = _search({0: 1.0, 1: 0.8, 2: 0.7, 4: 0.9})
    base = {"fp32": frozenset()}
    r.reject(base, "the first 2 layers in fp32 ran faster but lost 0.80 top-1 points (> tolerance 0.5)")
    assert r.fp32_prefix == 0 and r.proto is base and r.layers == [] and r.nodes == []
    assert r.summary() == "fully int8 kept: the first 2 layers in fp32 ran faster but lost 0.80 top-1 points " \
                          "(> tolerance 0.5)"
    assert r.to_dict()["rejected"].startswith("the first 2 layers")


def test_within_noise_the_fully_int8_model_stays():
    r, _, _ = _search({0: 1.0, 1: 0.97, 2: 0.99, 4: 1.2})
    assert r.fp32_prefix == 0 and r.proto == {"fp32": frozenset()} and r.layers == []
    assert "fully int8 kept" in r.summary() and "best 0.970 ms with 1" in r.summary()
    # the same gap counts once the noise band allows it
    assert _search({0: 1.0, 1: 0.97, 2: 0.99, 4: 1.2}, min_speedup=1.01)[0].fp32_prefix == 1


def test_the_guards_fp32_layers_stay_and_duplicates_are_not_built():
    r, built, timed = _search({0: 1.0, 2: 0.5, 4: 0.6}, base_exclude=["node_conv_0"])
    # prefix 1 is what the guard already keeps in fp32: not built again, not timed twice
    assert built == [["node_conv_0", "node_conv_1"], ["node_conv_0", "node_conv_1", "node_conv_2", "node_conv_3"]]
    assert timed == [["0", "2", "4"], ["0", "2"]]
    assert r.fp32_prefix == 2 and r.proto == {"fp32": frozenset({"node_conv_0", "node_conv_1"})}


def test_at_least_one_layer_stays_int8_and_nothing_is_timed_without_variants():
    r, built, _ = _search({0: 1.0, 1: 0.1}, nodes=NODES[:2])
    assert built == [["node_conv_0"]] and r.fp32_prefix == 1
    r, built, timed = _search({0: 1.0}, nodes=NODES[:1])
    assert built == [] and timed == [] and r.fp32_prefix == 0 and r.summary() == "fully int8 (no layer prefix to try)"


def test_weighted_nodes_in_graph_order(fp32_model):
    import onnx

    g = onnx.load(str(fp32_model)).graph
    nodes = weighted_nodes(g)
    convs = [n for n in g.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    assert [n for n, _ in nodes] == [n.name for n in convs] and len(nodes) == 28  # 27 convolutions + classifier
    inits = {i.name for i in g.initializer}
    assert all(w in inits for _, w in nodes)
    assert nodes[0][1] == next(i for i in convs[0].input[1:] if i in inits)


@pytest.fixture
def slow_full_int8(monkeypatch):
    """ONNX Runtime inference 2 ms slower (real wall time) for int8 models whose first layer is quantized."""
    from prunekit.inference.runtime import OnnxRuntime

    run = OnnxRuntime._run

    def _run(self, x):
        q = (self.meta.info or {}).get("quantization") or {}
        if self.meta.precision == "int8" and not q.get("fp32_nodes"):
            time.sleep(0.002)
        return run(self, x)

    monkeypatch.setattr(OnnxRuntime, "_run", _run)


def _quantize(fp32_model, out, *extra):
    rc, so, se = run_cli("quantize", "--model", fp32_model, "--data", "bundled", "--calib-samples", "128",
                         "--eval-samples", "300", "--repeats", "5", "--throughput-batch", "4", "--tolerance", "5",
                         "--out", out, "--overwrite", *extra)
    assert rc == 0, se
    return so


def test_a_slow_first_layer_is_kept_in_fp32(fp32_model, tmp_path, slow_full_int8):
    out = tmp_path / "m.int8.onnx"
    so = _quantize(fp32_model, out, "--fp32-prefix", "2")
    assert "mixed precision: keeping the first " in so
    res = json.loads(_quantize(fp32_model, out, "--fp32-prefix", "2", "--json"))
    m = res["mixed"]
    # prefix 1 and 2 are equally fast but for noise (on a loaded machine beyond min_speedup): either may win
    assert m["fp32_prefix"] in (1, 2) and [t["fp32_prefix"] for t in m["tried"]] == [0, 1, 2]
    assert m["tried"][0]["p50_ms"] > m["tried"][m["fp32_prefix"]]["p50_ms"] + 1.5  # the 2 ms were measured
    first = weighted_nodes(__import__("onnx").load(str(fp32_model)).graph)[: m["fp32_prefix"]]
    assert m["layers"] == [w for _, w in first]
    from prunekit.deploy import onnx_meta

    # the file written is that variant
    assert onnx_meta(out).info["quantization"]["fp32_nodes"] == [n for n, _ in first]
    assert res["int8"]["top1"] == pytest.approx(res["fp32"]["top1"], abs=5)
    assert f"keeping the first {m['fp32_prefix']}" in res["deploy"]["reason"]
    # off: the fully int8 model is written, nothing else timed
    res = json.loads(_quantize(fp32_model, out, "--fp32-prefix", "0", "--json"))
    assert res["mixed"] is None and onnx_meta(out).info["quantization"]["fp32_nodes"] == []


def test_variants_are_timed_only_when_speed_here_decides():
    from prunekit.config import QuantizeCfg
    from prunekit.steps import times_prefixes

    assert times_prefixes(QuantizeCfg()) and times_prefixes(QuantizeCfg(objective="throughput"))
    assert not times_prefixes(QuantizeCfg(fp32_prefix=0))
    for objective in ("size", "fp32", "int8"):  # speed does not decide
        assert not times_prefixes(QuantizeCfg(objective=objective))
    assert not times_prefixes(QuantizeCfg(cpu="x86-vnni"))  # quantized for another machine: timings here mislead
