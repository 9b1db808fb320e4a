"""The one-command pipeline: stages, skipping, partial reruns, kill + resume, report schema."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from prunekit.config import parse_config
from prunekit.pipeline import MARKER, STAGES, Pipeline

TINY = {
    "seed": 0,
    "model": {"width": 0.25},
    "data": {"name": "synthetic"},
    "train": {"epochs": 2, "batch_size": 64, "lr": 0.05, "warmup_epochs": 0.5},
    "prune": {"epochs": 2, "final_sparsity": 0.5, "schedule": {"end_epoch": 1.5}},
    "finetune": {"epochs": 1},
    # the TorchScript-based exporter: ~0.2 s per export instead of 5-8 s (dynamo: tests/deploy/test_onnx.py); the
    # setting also reaches the evaluate stage's exports of the dense and pruned models (checked below)
    "export": {"formats": ["onnx"], "exporter": "legacy"},
    "quantize": {"calib_samples": 64},
    "bench": {"repeats": 3},
}


def run(out, start=None, stop=None, **over):
    import copy

    d = copy.deepcopy(TINY)
    for k, v in over.items():
        sec, key = k.split("__")
        d.setdefault(sec, {})[key] = v
    d["out"] = str(out)
    logs = []
    pipe = Pipeline(parse_config(d), log=logs.append)
    pipe.run(start, stop)
    return pipe, logs


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipe")
    pipe, logs = run(out)
    return out, pipe, logs


def test_every_stage_runs_and_report_schema(first_run):
    out, pipe, logs = first_run
    assert [ln.split("]")[0][1:] for ln in logs if ln.endswith("running")] == list(STAGES)
    doc = json.loads((out / "report.json").read_text())
    for stage in ("dense", "pruned", "finetuned", "int8"):
        s = doc["stages"][stage]
        assert {"top1", "top5", "params", "macs", "size_bytes", "latency", "speedup"} <= set(s)
        assert 0 <= s["top1"] <= s["top5"] <= 100 and s["params"] > 0
    check_latency_fields(doc)
    # each figure is what evaluating that stage's file gives (not a placeholder): recompute two of them
    from prunekit.steps import evaluate

    for stage, path in (("int8", "stages/quantize/model.int8.onnx"), ("finetuned", "stages/finetune/model")):
        ev = evaluate(out / path, pipe.cfg.data, seed=pipe.cfg.seed)
        assert ev["n"] == 256 and (ev["top1"], ev["top5"]) == pytest.approx(
            (doc["stages"][stage]["top1"], doc["stages"][stage]["top5"])), stage
    assert doc["stages"]["pruned"]["params"] < doc["stages"]["dense"]["params"]
    from prunekit.deploy import onnx_meta

    for f in ("stages/export/model.onnx", "stages/evaluate/dense.onnx", "stages/evaluate/pruned.onnx"):
        assert onnx_meta(out / f).info["exporter"] == "legacy", f  # export.exporter, for the timed models too
    assert doc["surgery"]["max_abs_diff"] <= 1e-4
    assert len(doc["predict"]["top5"]) == 5 and {"label", "prob"} <= set(doc["predict"]["top5"][0])
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4 and "<table>" in html
    assert (out / "report.md").read_text().startswith("# prunekit report")
    for f in ("config.yaml", "stages/export/model.onnx", "stages/quantize/model.int8.onnx",
              "stages/prune/summary.md", "stages/prune/kept_channels.png", "stages/predict/sample.png"):
        assert (out / f).is_file(), f


RUNTIMES = ("pytorch", "onnxruntime-fp32", "onnxruntime-int8")


def check_latency_fields(doc):
    """Per-runtime latency for every stage, speed-ups only within one runtime, the deploy choice and its reason."""
    st = doc["stages"]
    for stage in ("dense", "pruned", "finetuned"):  # fp32 models: PyTorch eager and ONNX Runtime fp32
        lat = st[stage]["latency"]
        assert set(lat) == set(RUNTIMES) and lat["onnxruntime-int8"] is None
        assert lat["pytorch"] > 0 and lat["onnxruntime-fp32"] > 0
    assert {k: v is not None for k, v in st["int8"]["latency"].items()} == {
        "pytorch": False, "onnxruntime-fp32": False, "onnxruntime-int8": True}
    for s in st.values():
        assert set(s["speedup"]) <= {rt for rt in RUNTIMES if st["dense"]["latency"][rt] and s["latency"][rt]}
        for rt, x in s["speedup"].items():
            assert x == pytest.approx(st["dense"]["latency"][rt] / s["latency"][rt])
    assert st["int8"]["speedup"] == {}  # no dense int8 model: no cross-runtime ratio is made up
    d = doc["deploy"]
    assert d["choice"] in ("onnxruntime-fp32", "onnxruntime-int8") and len(d["reason"]) > 20
    assert d["stage"] == ("int8" if d["choice"] == "onnxruntime-int8" else "finetuned")
    assert d["latency_ms"] == st[d["stage"]]["latency"][d["choice"]] == st[d["stage"]]["latency_ms"]
    assert [k for k, s in st.items() if "latency_ms" in s] == [d["stage"]]  # kept for the deploy artifact only


def test_rerun_skips_everything_and_changes_rerun_from_the_changed_stage(first_run):
    out, _, _ = first_run
    t0 = time.perf_counter()
    _, logs = run(out)
    assert all(ln.endswith("skipped") for ln in logs) and len(logs) == len(STAGES)
    assert time.perf_counter() - t0 < 20
    _, logs = run(out, prune__final_sparsity=0.3)
    ran = [ln.split("]")[0][1:] for ln in logs if ln.endswith("running")]
    assert ran == list(STAGES[1:])  # train was reused
    doc = json.loads((out / "report.json").read_text())
    assert doc["config"]["prune"]["final_sparsity"] == 0.3


def test_from_stage_forces_a_rerun(tmp_path, first_run):
    out, _, _ = first_run
    _, logs = run(out, start="evaluate", prune__final_sparsity=0.3)
    ran = [ln.split("]")[0][1:] for ln in logs if ln.endswith("running")]
    assert ran == ["evaluate", "predict", "report"]


def test_to_stage_stops_after_it(first_run):
    out, _, _ = first_run
    run(out, prune__final_sparsity=0.3)  # the state the earlier tests leave (all skipped after them), also alone
    before = (out / "report.json").stat().st_mtime_ns
    # a later stage left as if killed half-way: it must not resume on top of the new finetune either
    pred = out / "stages" / "predict"
    (pred / "partial.json").write_text(json.dumps({"fingerprint": json.loads((pred / MARKER).read_text())[
        "fingerprint"]}))
    _, logs = run(out, start="surgery", stop="finetune", prune__final_sparsity=0.3)
    assert not (pred / "partial.json").exists() and not (pred / MARKER).exists()
    status = [ln.split("]")[0][1:] for ln in logs if ln.endswith(("running", "skipped"))]
    assert status == ["train", "prune", "surgery", "finetune"]
    assert [ln.split("]")[0][1:] for ln in logs if ln.endswith("running")] == ["surgery", "finetune"]
    assert (out / "report.json").stat().st_mtime_ns == before  # later stages not run
    # ... but no longer up to date: finetune ran, so the next run redoes export (and the rest)
    _, logs = run(out, stop="export", prune__final_sparsity=0.3)
    assert [ln.split("]")[0][1:] for ln in logs if ln.endswith("running")] == ["export"]
    from conftest import run_cli

    rc, _, se = run_cli("run", out / "config.yaml", "--from", "prune", "--to", "train")
    assert rc == 2 and se.count("\n") == 1 and "--to train comes before --from prune" in se


def test_a_killed_run_resumes_where_it_stopped(tmp_path):
    cfg = tmp_path / "c.yaml"
    import yaml

    d = {**TINY, "out": str(tmp_path / "run"), "train": {**TINY["train"], "epochs": 6}}
    cfg.write_text(yaml.safe_dump(d))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([sys.executable, "-m", "prunekit", "run", str(cfg)], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in p.stdout:  # kill in the middle of training, after a few epoch checkpoints
        seen.append(line)
        if line.startswith("[train] epoch 3.00"):
            p.send_signal(signal.SIGKILL)
            break
    p.wait(timeout=60)
    assert p.returncode == -signal.SIGKILL, "".join(seen[-5:])
    assert (tmp_path / "run" / "stages" / "train" / "checkpoint.pt").is_file()
    # the resumed run stops after train (`--to`): the later stages have nothing to do with resuming
    r = subprocess.run([sys.executable, "-m", "prunekit", "run", str(cfg), "--to", "train"], capture_output=True,
                       text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "stopped after train" in r.stdout and "not run: prune, surgery" in r.stdout
    assert not (tmp_path / "run" / "stages" / "prune").exists()
    assert "[train] running (resuming)" in r.stdout
    assert "resumed from" in r.stdout and "at step" in r.stdout
    assert "[train] epoch 1.00" not in r.stdout  # it did not start over
    # and it ended where an uninterrupted run ends: the same weights, byte for byte (`prunekit train` runs the
    # pipeline's train step)
    ref = subprocess.run([sys.executable, "-m", "prunekit", "train", "--config", str(cfg), "--out",
                          str(tmp_path / "ref")], capture_output=True, text=True, timeout=900, env=env)
    assert ref.returncode == 0, ref.stderr[-2000:]
    got = (tmp_path / "run" / "stages" / "train" / "model" / "model.safetensors").read_bytes()
    assert got == (tmp_path / "ref" / "model" / "model.safetensors").read_bytes()


def test_cli_run_prints_summary_and_rejects_bad_config(tmp_path, first_run):
    from conftest import run_cli

    out, _, _ = first_run
    cfg = tmp_path / "c.yaml"
    import yaml

    # the sparsity the earlier tests left the run at: only what they left out of date runs again
    cfg.write_text(yaml.safe_dump({**TINY, "out": str(out), "prune": {**TINY["prune"], "final_sparsity": 0.3}}))
    rc, so, se = run_cli("run", cfg)
    assert rc == 0, se
    assert "stage" in so and "int8" in so and "report.html" in so
    header = next(ln for ln in so.splitlines() if ln.startswith("stage"))
    assert header.split() == ["stage", "top-1", "top-5", "params", "MACs", "size", "PyTorch", "b=1", "ORT", "fp32",
                              "b=1", "ORT", "int8", "b=1", "deploy"]
    doc = json.loads((out / "report.json").read_text())
    assert f"Deploy: {doc['deploy']['choice']}" in so and doc["deploy"]["reason"] in so
    cfg.write_text("trian: {}\n")
    rc, so, se = run_cli("run", cfg)
    assert rc == 2 and "did you mean 'train'" in se and "Traceback" not in se
