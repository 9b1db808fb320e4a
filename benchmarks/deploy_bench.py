"""Deployment benchmark: dense vs 75%-pruned MobileNet V1 on Fashion-MNIST (28x28x1), CPU, three runtimes.

In one run: train the dense model, prune 75% of the pointwise channels (gradual, while training), shrink it
(surgery), then benchmark both model directories with ``prunekit.inference.bench`` — PyTorch eager fp32,
ONNX Runtime fp32 and ONNX Runtime int8 (static QDQ, per-channel, calibrated on training images) — and
measure test accuracy of dense fp32, pruned fp32 and pruned int8. Reports (does not assert) two targets:

* size:    the pruned int8 ONNX file is >= 12x smaller than the dense fp32 model (ONNX file);
* latency: pruned ONNX Runtime int8 at batch 1 is >= 3x faster (p50) than dense PyTorch eager fp32.

Usage::

    python benchmarks/deploy_bench.py --data-dir ~/fashion-mnist      # full: 60k images, width 1.0
    python benchmarks/deploy_bench.py --quick                         # bundled subset, width 0.25, ~2-4 min
    python benchmarks/deploy_bench.py --quick --dense RUN/model --pruned SHRUNK   # just benchmark two dirs
    python benchmarks/deploy_bench.py --threads 1 --repeats 500

Writes ``benchmarks/results/deploy.{json,md}`` (``--quick``: ``benchmarks/results/_work/deploy_quick.*``).
Trained models are kept in ``benchmarks/results/_work/deploy_<mode>_w<width>_e<epochs>_p<prune epochs>/`` and
reused by a run with the same settings (``--retrain`` to redo).
Timings are only as good as the machine is quiet: run it with nothing else on the CPU.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from prunekit.cli import main as cli
from prunekit.inference.bench import RUNTIME_LABELS, BenchSettings, bench, format_markdown, format_table

ROOT = Path(__file__).resolve().parent
SIZE_TARGET, LATENCY_TARGET = 12.0, 3.0
MODES = {  # width, train epochs, prune epochs, batch size, lr, timed runs
    "quick": {"width": 0.25, "epochs": 3, "prune_epochs": 2, "batch_size": 64, "lr": 0.05, "repeats": 30},
    "full": {"width": 1.0, "epochs": 10, "prune_epochs": 5, "batch_size": 128, "lr": 0.05, "repeats": 200},
}


def run(*args) -> None:
    print("$ prunekit " + " ".join(map(str, args)), flush=True)
    rc = cli([str(a) for a in args])
    if rc != 0:
        raise SystemExit(f"prunekit {args[0]} failed with exit code {rc}")


def build_models(work: Path, data: list[str], cfg: dict, retrain: bool) -> tuple[Path, Path]:
    """Train dense -> prune 75% -> surgery; reuse what a previous run left in ``work``."""
    dense, pruned, shrunk = work / "dense", work / "pruned", work / "shrunk"
    if retrain and work.exists():
        shutil.rmtree(work)
    if not (dense / "model" / "model.json").is_file():
        run("train", *data, "--width", cfg["width"], "--epochs", cfg["epochs"], "--batch-size", cfg["batch_size"],
            "--lr", cfg["lr"], "--out", dense, "--device", "cpu", "--overwrite")
    if not (pruned / "model" / "model.json").is_file():
        run("prune", "--model", dense / "model", *data, "--final-sparsity", "0.75", "--epochs", cfg["prune_epochs"],
            "--batch-size", cfg["batch_size"], "--lr", cfg["lr"] / 2, "--out", pruned, "--device", "cpu",
            "--overwrite")
    if not (shrunk / "model.json").is_file():
        run("surgery", "--model", pruned / "model", "--out", shrunk, "--overwrite")
    return dense / "model", shrunk


def accuracy(dense: Path, pruned: Path, res: dict, data_name: str, data_dir: str | None) -> dict:
    """Test top-1 of dense fp32, pruned fp32 (PyTorch) and pruned int8 (ONNX Runtime)."""
    from types import SimpleNamespace

    from prunekit.commands.common import model_data
    from prunekit.inference import evaluate_runtime, load_runtime

    out = {}
    files = {m["path"]: m.get("files") or {} for m in res["models"]}
    for name, path in (("dense fp32", dense), ("pruned fp32", pruned), ("pruned int8", pruned)):
        ref = files[str(path)].get("onnx_int8") if name.endswith("int8") else path
        if ref is None:
            continue
        rt = load_runtime(ref)
        bundle = model_data(SimpleNamespace(spec=rt.meta.spec()), data_name, data_dir)
        ev = evaluate_runtime(rt, bundle, "test")
        out[name] = {"top1": ev["top1"], "top5": ev["top5"], "n": ev["n"], "runtime": rt.name}
    return out


def targets(res: dict) -> dict:
    dense, pruned = (m["headline"] for m in res["models"][:2])
    size = dense["size_onnx_fp32"] / pruned["size_onnx_int8"]
    size_st = dense["size_safetensors"] / pruned["size_onnx_int8"]
    lat = dense["pytorch_fp32_p50_ms"] / pruned["ort_int8_p50_ms"]
    return {"size_x": size, "size_x_vs_safetensors": size_st, "size_target": SIZE_TARGET, "size_met": size >= SIZE_TARGET,
            "latency_x": lat, "latency_target": LATENCY_TARGET, "latency_met": lat >= LATENCY_TARGET,
            "latency_x_ort_fp32_dense": dense["ort_fp32_p50_ms"] / pruned["ort_int8_p50_ms"]}


def markdown(doc: dict) -> str:
    res, t, m = doc["bench"], doc["targets"], doc["bench"]["machine"]
    st = res["settings"]
    lines = [f"# Deployment benchmark: dense vs 75%-pruned MobileNet V1 ({doc['mode']})", "",
             f"{doc['created']}. Data: {doc['data']}; width {doc['config']['width']}, {doc['config']['epochs']} "
             f"training epochs, {doc['config']['prune_epochs']} pruning epochs (final sparsity 0.75, pointwise "
             f"channels), then surgery.", "",
             f"Machine: {m['cpu']}, {m['available_cores']} of {m['logical_cores']} cores, {m['platform']}; "
             f"Python {m['python']}, torch {m['torch']}, onnxruntime {m['onnxruntime']}. Threads: {st['threads']}; "
             f"{st['warmup']} warm-up + up to {st['repeats']} timed runs per runtime and batch size "
             f"(latency: batch {st['latency_batch']}, throughput: batch {st['throughput_batch']}).", "",
             format_markdown(res), "", "Ratios are pruned / dense (below 1: smaller or faster; above 1 for img/s: "
             "more throughput).", "", "## Targets (reported, not asserted)", "",
             "| target | measured | goal | met |", "|---|---:|---:|---|",
             f"| pruned int8 ONNX file vs dense fp32 ONNX file | {t['size_x']:.1f}x smaller | >= {t['size_target']:.0f}x "
             f"| {'yes' if t['size_met'] else 'no'} |",
             f"| pruned {RUNTIME_LABELS['ort_int8']} vs dense {RUNTIME_LABELS['pytorch_fp32']}, batch 1 p50 | "
             f"{t['latency_x']:.1f}x faster | >= {t['latency_target']:.0f}x | {'yes' if t['latency_met'] else 'no'} |",
             "", f"(vs dense model.safetensors: {t['size_x_vs_safetensors']:.1f}x smaller; vs dense ONNX Runtime fp32 "
             f"at batch 1: {t['latency_x_ort_fp32_dense']:.2f}x faster.)", ""]
    if doc.get("accuracy"):
        lines += ["## Test accuracy", "", "| model | runtime | top-1 | top-5 | images |", "|---|---|---:|---:|---:|"]
        for name, a in doc["accuracy"].items():
            lines.append(f"| {name} | {a['runtime']} | {a['top1']:.2f}% | {a['top5']:.2f}% | {a['n']} |")
        lines.append("")
    if doc["mode"] == "quick":
        lines += ["*Quick mode: small model trained briefly on the bundled subset, on whatever machine ran it; "
                  "the numbers prove the pipeline works, they are not the reference results.*", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="bundled subset, width 0.25, a few epochs")
    ap.add_argument("--data-dir", help="Fashion-MNIST IDX directory (full mode; default: $PRUNEKIT_DATA / system)")
    ap.add_argument("--dense", help="dense model directory (skip training)")
    ap.add_argument("--pruned", help="pruned (shrunk) model directory (skip training)")
    ap.add_argument("--width", type=float, help="override the width multiplier")
    ap.add_argument("--threads", type=int, help="threads for every runtime (default: all available cores)")
    ap.add_argument("--repeats", type=int, help="timed runs per runtime and batch size")
    ap.add_argument("--batch", default="1,32", help="batch sizes: latency at the smallest, throughput at the largest")
    ap.add_argument("--retrain", action="store_true", help="ignore models left by a previous run")
    ap.add_argument("--no-accuracy", dest="accuracy", action="store_false", help="skip test-set accuracy")
    ap.add_argument("--out", help="output prefix (writes PREFIX.json and PREFIX.md)")
    args = ap.parse_args(argv)
    mode = "quick" if args.quick else "full"
    cfg = dict(MODES[mode])
    if args.width:
        cfg["width"] = args.width
    data_name = "bundled" if args.quick else "fashion-mnist"
    data = ["--data", data_name] + (["--data-dir", args.data_dir] if args.data_dir and not args.quick else [])
    t0 = time.perf_counter()
    if bool(args.dense) != bool(args.pruned):
        ap.error("--dense and --pruned go together")
    if args.dense:
        dense, pruned = Path(args.dense), Path(args.pruned)
    else:
        key = f"deploy_{mode}_w{cfg['width']}_e{cfg['epochs']}_p{cfg['prune_epochs']}"  # settings in the name: no stale reuse
        dense, pruned = build_models(ROOT / "results" / "_work" / key, data, cfg, args.retrain)
    s = BenchSettings(batches=tuple(sorted({int(b) for b in args.batch.split(",")})), threads=args.threads,
                      repeats=args.repeats or cfg["repeats"], warmup=10 if mode == "full" else 5)
    res = bench([dense, pruned], s, log=lambda msg: print(msg, flush=True), names=["dense", "pruned"])
    print(format_table(res))
    doc = {"created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "mode": mode,
           "data": "bundled Fashion-MNIST subset (4k train / 1k test)" if args.quick else "Fashion-MNIST (60k / 10k)",
           "config": cfg, "models": {"dense": str(dense), "pruned": str(pruned)}, "bench": res}
    doc["targets"] = targets(res)
    if args.accuracy:
        doc["accuracy"] = accuracy(dense, pruned, res, data_name, args.data_dir)
    doc["seconds"] = time.perf_counter() - t0
    prefix = Path(args.out) if args.out else ROOT / "results" / ("_work/deploy_quick" if args.quick else "deploy")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    from prunekit.io import write_json, write_text

    write_json(prefix.with_suffix(".json"), doc)
    write_text(prefix.with_suffix(".md"), markdown(doc))
    t = doc["targets"]
    print(f"\nsize: pruned int8 is {t['size_x']:.1f}x smaller than dense fp32 ONNX (target {SIZE_TARGET:.0f}x: "
          f"{'met' if t['size_met'] else 'NOT met'}); latency: pruned ORT int8 is {t['latency_x']:.1f}x faster "
          f"than dense PyTorch fp32 at batch 1 (target {LATENCY_TARGET:.0f}x: {'met' if t['latency_met'] else 'NOT met'})")
    print(f"wrote {prefix.with_suffix('.json')} and {prefix.with_suffix('.md')} ({doc['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
