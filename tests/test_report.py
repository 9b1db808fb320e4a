"""The report's latency fields and sentences on given measurements: one column per runtime, speed-ups only
within a runtime, and the deploy sentence built from what was measured (no fixed claims)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from prunekit.report.html import _budget_summary, _headline, collect, deploy_line, summary_rows

FP32, INT8 = "onnxruntime-fp32", "onnxruntime-int8"


def stage(top1, params, lat, **kw):
    return {"top1": top1, "top5": 99.0, "params": params, "macs": params * 10, "size_bytes": params * 4,
            "latency": {"pytorch": None, FP32: None, INT8: None, **lat}, **kw}


def fake_pipeline(deploy, int8_ms=0.110):
    stages = {"dense": stage(90.0, 3_000_000, {"pytorch": 7.25, FP32: 0.674}),
              "pruned": stage(80.0, 200_000, {"pytorch": 2.4, FP32: 0.11}),
              "finetuned": stage(89.0, 200_000, {"pytorch": 2.37, FP32: 0.103}),
              "int8": stage(88.9, 200_000, {INT8: int8_ms})}
    quantize = {"deploy": deploy, "settings": {"label": "U8S8", "reason": "x86-vnni (detected from /proc/cpuinfo)"},
                "guard": {"summary": "int8 top-1 88.90% vs fp32 89.00%"}, "path": "model.int8.onnx"}
    results = {"evaluate": {"stages": stages, "deploy": deploy, "load_avg": [3.5, 3.0, 2.0]}, "surgery": {},
               "predict": {}, "quantize": quantize}
    cfg = SimpleNamespace(to_dict=lambda: {})
    return SimpleNamespace(results=results, ctx=SimpleNamespace(device="cpu"), cfg=cfg,
                           stage_dir=lambda name: __import__("pathlib").Path("/nonexistent") / name)


SLOWER = {"choice": FP32, "path": "/run/stages/export/model.onnx", "stage": "finetuned", "latency_ms": 0.103,
          "reason": "int8 is slower at batch 1: 0.110 ms vs 0.103 ms fp32 (1.07x slower); fp32 kept"}


def test_speedups_only_within_one_runtime():
    doc = collect(fake_pipeline(SLOWER))
    st = doc["stages"]
    assert st["finetuned"]["speedup"] == pytest.approx({"pytorch": 7.25 / 2.37, FP32: 0.674 / 0.103})
    assert st["int8"]["speedup"] == {}  # the int8 model is never compared with the dense PyTorch model
    assert doc["deploy"]["choice"] == FP32 and doc["latency_load_avg"] == [3.5, 3.0, 2.0]


def test_summary_table_has_a_column_per_runtime():
    rows = summary_rows(collect(fake_pipeline(SLOWER)))
    assert rows[0] == ["stage", "top-1", "top-5", "params", "MACs", "size", "PyTorch b=1", "ORT fp32 b=1",
                       "ORT int8 b=1", "deploy"]
    by = {r[0]: r for r in rows[1:]}
    assert by["dense"][6:9] == ["7.25 ms", "0.674 ms", "-"]
    assert by["finetuned"][6:9] == ["2.37 ms (3.06x)", "0.103 ms (6.54x)", "-"]
    assert by["int8"][6:9] == ["-", "-", "0.110 ms"]  # no ratio: there is no dense int8 model
    assert [r[0] for r in rows[1:] if r[-1] == "yes"] == ["finetuned"]


def test_sentences_follow_the_measurements():
    doc = collect(fake_pipeline(SLOWER))
    text = "\n".join(_headline(doc))
    assert "PyTorch eager: dense 7.25 ms, pruned 2.40 ms (3.02x vs dense), finetuned 2.37 ms (3.06x vs dense)" in text
    assert "ONNX Runtime fp32: dense 0.674 ms, pruned 0.110 ms (6.13x vs dense), finetuned 0.103 ms" in text
    assert "ONNX Runtime int8: int8 0.110 ms. Speed-ups compare within one runtime" in text
    assert "load average 3.50" in text
    assert "int8 settings: U8S8 QDQ, for x86-vnni (detected from /proc/cpuinfo); int8 top-1 88.90%" in text
    assert doc["quantize"]["settings"]["label"] == "U8S8" and doc["quantize"]["path"] == "model.int8.onnx"
    assert deploy_line(doc) == f"Deploy: {FP32} (model.onnx). {SLOWER['reason']}"
    assert "int8 is slower" in text and "faster" not in deploy_line(doc)
    faster = {"choice": INT8, "path": "/run/stages/quantize/model.int8.onnx", "stage": "int8", "latency_ms": 0.05,
              "reason": "int8 is 2.06x faster at batch 1 (0.050 ms vs 0.103 ms fp32); top-1 88.90% vs 89.00%"}
    doc = collect(fake_pipeline(faster, int8_ms=0.05))
    assert deploy_line(doc).startswith(f"Deploy: {INT8} (model.int8.onnx). int8 is 2.06x faster")
    assert [r[0] for r in summary_rows(doc)[1:] if r[-1] == "yes"] == ["int8"]
    assert deploy_line({"deploy": {}}) is None


@pytest.mark.parametrize("used", ["searched", "uniform", "ranked"])
def test_the_budget_sentence_names_the_allocation_pruned_to(used):
    doc = collect(fake_pipeline(SLOWER))
    b = {"budget": "latency_ms=0.5x", "target": 0.5, "predicted": 0.49, "measured": 0.48, "met": True,
         "used": used, "allocation": {"score": {"top1": 41.0}}, "uniform": {"score": {"top1": 37.5}},
         "ranked": {"score": {"top1": 39.25}}, "candidates": [{}] * 3}
    doc["budget"] = _budget_summary(b)
    text = "\n".join(_headline(doc))
    assert "Budget latency_ms=0.5x: target 0.5, predicted 0.49, measured 0.48 after pruning: met" in text
    want = {"searched": "The search's best allocation scored 41.00% top-1 before training (adaptive BN, held-out "
                        "training images) where uniform pruning to the same budget scored 37.50%; the searched "
                        "allocation was pruned to.",
            "uniform": "The uniform allocation was pruned to; before training (adaptive BN, held-out training "
                       "images) it scored 37.50% top-1.",
            "ranked": "The ranked allocation was pruned to (no search: channels ranked across layers per unit of the "
                      "budget they save); before training (adaptive BN, held-out training images) it scored 39.25% "
                      "top-1, uniform pruning to the same budget 37.50%."}
    assert want[used] in text


@pytest.mark.parametrize("kept", ["searched", "uniform"])
def test_the_budget_sentence_says_whether_fresh_images_confirmed_the_pick(kept):
    """The plan's check on fresh images: confirmed, or the search's (rejected) pick and why uniform was kept."""
    doc = collect(fake_pipeline(SLOWER))
    check = {"images": 2000, "searched_top1": 19.7, "uniform_top1": 13.8, "diff": 5.9, "se": 1.18, "kept": kept}
    alloc = ({"score": {"top1": 22.6}, "confirm": check} if kept == "searched" else
             {"score": {"top1": 12.4}, "confirm": check, "rejected_score": {"top1": 22.6}})
    doc["budget"] = _budget_summary({"budget": "macs=0.25x", "target": 1.0, "predicted": 0.9, "measured": 0.9,
                                     "met": True, "used": "searched", "allocation": alloc,
                                     "uniform": {"score": {"top1": 12.4}}, "candidates": []})
    text = "\n".join(_headline(doc))
    assert "best allocation scored 22.60% top-1" in text and "scored 12.40%" in text
    assert "on 2000 fresh held-out images 19.70% vs 13.80% (+5.90 +- 1.18 paired)" in text
    assert ("confirmed;" in text) == (kept == "searched")
    assert ("so the plan kept uniform's allocation" in text) == (kept == "uniform")


def test_the_int8_variants_timed_are_reported():
    p = fake_pipeline(SLOWER)
    tried = [{"fp32_prefix": 0, "layers": [], "p50_ms": 0.20}, {"fp32_prefix": 1, "layers": ["stem.conv.weight"],
                                                                "p50_ms": 0.15}]
    p.results["quantize"]["mixed"] = {"fp32_prefix": 1, "tried": tried, "summary": "keeping the first 1 layer ..."}
    doc = collect(p)
    assert doc["quantize"]["mixed"]["fp32_prefix"] == 1  # report.json
    text = "\n".join(_headline(doc))
    assert "int8 top-1 88.90% vs fp32 89.00%; keeping the first 1 layer ...." in text
    p.results["quantize"]["mixed"] = {"fp32_prefix": 0, "tried": tried[:1], "summary": "fully int8 (no layer ...)"}
    assert "no layer" not in "\n".join(_headline(collect(p)))  # nothing was timed: nothing to say


def test_the_8bit_weights_retry_is_reported():
    p = fake_pipeline(SLOWER)
    w = {"full_range": True, "drop_7bit": 2.1, "drop_8bit": 0.4, "tolerance": 0.5,
         "summary": "7-bit weights lost 2.10 top-1 points (> tolerance 0.5), 8-bit weights 0.40: 8-bit weights kept"}
    p.results["quantize"]["weights"] = w
    doc = collect(p)
    assert doc["quantize"]["weights"] == w  # report.json
    assert f"; {w['summary']}; int8 top-1 88.90%" in "\n".join(_headline(doc))
    p.results["quantize"]["weights"] = {**w, "drop_8bit": None, "full_range": False, "summary": "7-bit: within"}
    assert "7-bit" not in "\n".join(_headline(collect(p)))  # 8-bit not tried: nothing to say
