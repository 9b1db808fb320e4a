"""Deployment benchmark: does int8 pay, on this CPU? MobileNet V1 1.0 dense and 75%-pruned, at 28x28x1 and
224x224x3 (Fashion-MNIST, upscaled to 3x224x224 for the large models), ONNX Runtime fp32 vs int8.

For each of the four models: train (briefly at 224: see the mode table), export fp32 ONNX, quantize with
``prunekit.steps.quantize`` (the settings it picks for this CPU, the accuracy guard, the deploy choice: the same
code as ``prunekit quantize`` and the pipeline), then measure on this machine:

* ONNX Runtime fp32 vs int8 at batch 1 and 32, timed in alternating rounds (the ratio is the point);
* PyTorch eager fp32 at the same batches (its own runtime: never compared with ONNX Runtime);
* file sizes (safetensors, fp32 ONNX, int8 ONNX);
* top-1 of fp32 vs int8 (ONNX Runtime) on the Fashion-MNIST test set (``$PRUNEKIT_DATA``,
  /work/shared/data/fashion-mnist, --data-dir; the bundled 1k-image subset otherwise, and said so).

Goals (reported, not asserted): int8 >= 1.5x faster than fp32 on the 224x224 models (a CPU with int8
instructions: see the machine line), int8 top-1 within 0.5 pt of fp32, and the deploy choice never an int8
model slower than its fp32 model (re-checked against this benchmark's own, longer timing). Then the
``round_to`` study (``round_to_bench.py``): do channel counts rounded to 4/8/16 change latency? And the sweep
behind the per-CPU settings: U8S8, U8S8 + reduce_range, S8S8 and U8U8 timed against fp32 on the dense models.

    python benchmarks/deploy_bench.py                 # full: the reference figures (about 1-1.5 h on 2 cores)
    python benchmarks/deploy_bench.py --quick         # ~10-15 min on 2 cores: fewer images/epochs/repeats
    python benchmarks/deploy_bench.py --threads 1 --repeats 200

Quick mode cuts: 28x28 trained on 10k images for 2+1 epochs (full: 60k, 8+3), 224x224 on 2,048 images for 1+1
epochs (full: 8,000, 2+1) with 1,000 test images (full: all 10k), a 500-image held-out slice for the deploy
decision (full: 2,000), 60 timed runs in 10 alternating rounds (full: 100; the deploy decision and this table alike:
``DECISION_ROUNDS``), and the round_to study with 10 rounds. Writes
``benchmarks/results/deploy.{json,md}`` (quick: ``deploy_quick.*``) and ``round_to.{json,md}``
(quick: ``round_to_quick.*``), each with commit, versions, machine and the load average over the run. Models are
kept in ``benchmarks/results/_work/deploy_<mode>/`` and reused by a run with the same settings (--retrain: redo).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import round_to_bench  # noqa: E402
from _common import (  # noqa: E402
    RESULTS,
    WORK,
    LoadSampler,
    command_line,
    environment,
    find_data_dir,
    load_fmnist,
    log,
    now,
    provenance_line,
    write_results,
)

FP32, INT8, PYTORCH = "onnxruntime-fp32", "onnxruntime-int8", "pytorch"
INT8_FULL = "onnxruntime-int8-full"  # every layer int8 (timed when the int8 model keeps its first layers in fp32)
SPEEDUP_GOAL, ACC_GOAL = 1.5, 0.5
MODES = {  # per resolution: training images (0: all), test images (0: all), epochs, fine-tune epochs, batch, lr,
    # warm-up epochs (224: 1 epoch of 2,048 images at batch 16 reached 69.6% top-1 on 500 test images, batch 32
    # with 1,024 images stayed at chance)
    "quick": {28: {"train": 10_000, "test": 0, "epochs": 2, "ft_epochs": 1, "batch": 128, "lr": 0.05, "warmup": 1},
              224: {"train": 2048, "test": 1000, "epochs": 1, "ft_epochs": 1, "batch": 16, "lr": 0.03, "warmup": 0.2},
              "repeats": 20, "eval_samples": 500, "calib_samples": 256, "round_to_repeats": 10},
    "full": {28: {"train": 0, "test": 0, "epochs": 8, "ft_epochs": 3, "batch": 128, "lr": 0.05, "warmup": 1},
             224: {"train": 8000, "test": 0, "epochs": 2, "ft_epochs": 1, "batch": 16, "lr": 0.03, "warmup": 0.2},
             "repeats": 100, "eval_samples": 2000, "calib_samples": 512, "round_to_repeats": 50},
}
SPARSITY = 0.75


def data_for(size: int, m: dict, data_dir: str | None):
    """(training bundle with a small test split for the per-epoch check, evaluation bundle, description)."""
    from prunekit.data import TensorSplit, adapt, load_data
    from prunekit.errors import PrunekitError

    try:
        full = load_fmnist(data_dir, train_subset=m["train"], test_subset=m["test"])
        what = f"Fashion-MNIST ({len(full.train):,} train / {len(full.test):,} test images)"
    except PrunekitError as e:
        full = load_data("bundled")
        what = f"bundled Fashion-MNIST subset ({len(full.train):,} / {len(full.test):,}): full set not found ({e})"
    if size != 28:
        full = adapt(full, 3, [size, size])
        what += f", upscaled to 3x{size}x{size}"
    small_test = TensorSplit(full.test.images[:500], full.test.labels[:500])
    return dataclasses.replace(full, test=small_test), full, what


def train_models(size: int, m: dict, work: Path, train_bundle, retrain: bool) -> dict[str, Path]:
    """Dense (trained) and 75%-pruned (one-shot L1 on pointwise channels, surgery, fine-tuned) model dirs."""
    from prunekit import steps
    from prunekit.config import parse_config

    if retrain and work.exists():
        shutil.rmtree(work)
    cfg = parse_config({"seed": 0, "model": {"width": 1.0}, "data": {"name": "fashion-mnist"},
                        "train": {"epochs": m["epochs"], "batch_size": m["batch"], "lr": m["lr"],
                                  "warmup_epochs": min(m["warmup"], m["epochs"] / 2), "eval_batch_size": 64},
                        "finetune": {"epochs": m["ft_epochs"], "lr": m["lr"] / 2}})
    dense, shrunk, pruned = work / "dense", work / "shrunk", work / "pruned"
    if not (dense / "model" / "model.json").is_file():
        log(f"training dense {size}x{size} ({m['epochs']} epochs on {len(train_bundle.train)} images)")
        steps.train(cfg, dense, data=train_bundle, log=lambda s: None)
    if not (pruned / "model" / "model.json").is_file():
        log(f"pruning {SPARSITY:.0%} of the pointwise channels one-shot (L1), surgery, fine-tuning")
        steps.surgery(dense / "model", shrunk, steps.Surgery(sparsity=SPARSITY, criterion="l1", layers="pointwise"))
        steps.finetune(cfg, shrunk, pruned, data=train_bundle, log=lambda s: None)
    return {"dense": dense / "model", "pruned": pruned / "model"}


def deploy_model(name: str, model_dir: Path, bundle, mode: dict, threads: int) -> dict:
    """Export, quantize + choose (steps.quantize), then this benchmark's own timing and full-test accuracy."""
    from prunekit import steps
    from prunekit.config import BenchCfg, DataCfg, QuantizeCfg
    from prunekit.cost import profile
    from prunekit.inference.bench import (
        DECISION_MIN_RUNS,
        DECISION_ROUNDS,
        compare_onnx,
        load_average,
        stats,
        time_interleaved,
    )
    from prunekit.inference.runtime import evaluate_runtime, load_onnx
    from prunekit.saved import load

    fp32, int8 = model_dir.parent / "model.onnx", model_dir.parent / "model.int8.onnx"
    steps.export(model_dir, fp32, "onnx")
    q = QuantizeCfg(calib_samples=mode["calib_samples"], eval_samples=mode["eval_samples"])
    log(f"{name}: quantizing, accuracy guard, fp32-vs-int8 decision")
    qres = steps.quantize(fp32, int8, DataCfg(name="fashion-mnist"), q, evaluate=True, bundle=bundle,
                          bench=BenchCfg(threads=threads, repeats=max(mode["repeats"], DECISION_MIN_RUNS)),
                          log=lambda s: log(f"  {s}"))
    files = {FP32: fp32, INT8: int8}
    if (qres.get("mixed") or {}).get("fp32_prefix"):  # what keeping the first layers in fp32 bought: time both
        full = model_dir.parent / "model.full.int8.onnx"
        if full.exists():
            full.unlink()
        steps.quantize(fp32, full, DataCfg(name="fashion-mnist"), q, bundle=bundle)  # same settings, no layer fp32
        files[INT8_FULL] = full
    loaded = load(model_dir)
    prof = profile(loaded.model, loaded.input_shape)
    log(f"{name}: timing ONNX Runtime fp32 vs int8 and PyTorch eager (batch 1 and 32)")
    lat = compare_onnx(files, (1, 32), threads, max(mode["repeats"], DECISION_MIN_RUNS), 5, 60.0, DECISION_ROUNDS)
    model = loaded.model.eval()
    lat[PYTORCH] = {}
    for b in (1, 32):
        x = torch.randn(b, *loaded.input_shape)

        def run(x=x):
            with torch.inference_mode():
                model(x)

        lat[PYTORCH][str(b)] = stats(time_interleaved({"m": run}, 3, mode["repeats"], 60.0)["m"], b)
    log(f"{name}: top-1 of fp32 and int8 on {len(bundle.test):,} test images (ONNX Runtime)")
    acc = {}
    for key, path in ((FP32, fp32), (INT8, int8)):
        ev = evaluate_runtime(load_onnx(path, threads), bundle, "test", 64)
        acc[key] = {"top1": ev["top1"], "top5": ev["top5"], "n": ev["n"]}
    speed = {b: lat[FP32][b]["p50_ms"] / lat[INT8][b]["p50_ms"] for b in ("1", "32")}
    shipped = qres["deploy"]["choice"]
    return {"params": prof.params, "macs": prof.macs, "input": list(loaded.input_shape),
            "sizes": {"safetensors": (model_dir / "model.safetensors").stat().st_size,
                      "onnx_fp32": fp32.stat().st_size, "onnx_int8": int8.stat().st_size},
            "quantization": qres["settings"], "guard": qres["guard"], "deploy": qres["deploy"],
            "decision_latency": qres["latency"], "mixed": qres.get("mixed"), "latency": lat, "int8_speedup": speed, "accuracy": acc,
            "top1_drop": acc[FP32]["top1"] - acc[INT8]["top1"],
            "shipped_int8_slower": shipped == INT8 and speed["1"] < 1 / q.min_speedup, "load_avg": load_average(),
            "train_test_top1": (loaded.spec.extra.get("metrics") or {}).get("test", {}).get("top1")}


SWEEP = {"U8S8": ("uint8", "int8", False), "U8S8 reduce_range": ("uint8", "int8", True),
         "S8S8": ("int8", "int8", False), "U8U8": ("uint8", "uint8", False)}


def sweep(model_dir: Path, bundle, mode: dict, threads: int) -> dict:
    """The evidence behind the per-CPU table: every activation/weight type combination on this machine, per-channel
    QDQ, int8 vs fp32 in ONNX Runtime at batch 1 and 32 (all variants and fp32 timed interleaved), and top-1 on the
    held-out slice (the first ``eval_samples`` test images: 7-bit weights or saturation cost accuracy)."""
    import tempfile

    from prunekit.deploy import calibration_batches, quantize_onnx, settings_for
    from prunekit.inference.bench import compare_onnx
    from prunekit.inference.runtime import evaluate_runtime, load_onnx

    fp32 = model_dir.parent / "model.onnx"
    with tempfile.TemporaryDirectory(prefix="sweep_") as tmp:
        files = {FP32: fp32}
        for label, (act, wt, rr) in SWEEP.items():
            out = Path(tmp) / f"{label.replace(' ', '_')}.onnx"
            quantize_onnx(fp32, out, calibration_batches(bundle, 64, 16), calib_source="sweep",
                          settings=settings_for(activations=act, weights=wt, reduce_range=rr))
            files[label] = out
        lat = compare_onnx(files, (1, 32), threads, mode["repeats"], 3, 60.0)
        top1 = {k: evaluate_runtime(load_onnx(p, threads), bundle, "test", 64, mode["eval_samples"])["top1"]
                for k, p in files.items()}
    return {label: {"p50_ms": {b: lat[label][b]["p50_ms"] for b in ("1", "32")},
                    "speedup": {b: lat[FP32][b]["p50_ms"] / lat[label][b]["p50_ms"] for b in ("1", "32")},
                    "top1": top1[label], "top1_drop": top1[FP32] - top1[label]}
            for label in SWEEP} | {FP32: {"p50_ms": {b: lat[FP32][b]["p50_ms"] for b in ("1", "32")},
                                          "top1": top1[FP32]}}


def goals(models: dict) -> dict:
    from prunekit.config import QuantizeCfg

    noise = QuantizeCfg().min_speedup  # the deploy decision picks int8 only when it is this much faster
    out = {"speedup_goal": SPEEDUP_GOAL, "accuracy_goal_pt": ACC_GOAL, "noise": noise, "models": {}}
    for res, per in models.items():
        for name, r in per.items():
            g = {"int8_speedup_b1": r["int8_speedup"]["1"], "int8_speedup_b32": r["int8_speedup"]["32"],
                 "top1_drop": r["top1_drop"], "accuracy_met": r["top1_drop"] <= ACC_GOAL,
                 "deploy": r["deploy"]["choice"],
                 # slower = beyond the decision's own noise band (int8 must be NOISE x faster to be chosen): a
                 # re-measurement of a sub-ms model scatters by more than that band on this class of machine
                 "never_ships_slower_int8": not (r["deploy"]["choice"] == INT8 and r["int8_speedup"]["1"] < 1 / noise),
                 "int8_within_noise": r["deploy"]["choice"] == INT8 and 1 / noise <= r["int8_speedup"]["1"] < 1}
            if res.startswith("224"):
                g["speedup_met_b1"] = g["int8_speedup_b1"] >= SPEEDUP_GOAL
                g["speedup_met_b32"] = g["int8_speedup_b32"] >= SPEEDUP_GOAL
            out["models"][f"{res} {name}"] = g
    return out


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def _full_cell(lat: dict, b: str) -> str:
    """The every-layer int8 model's p50 and its speed-up over fp32 (same rounds), or '-' when not timed."""
    if INT8_FULL not in lat:
        return "-"
    ms = lat[INT8_FULL][b]["p50_ms"]
    return f"{ms:.3f} ms ({lat[FP32][b]['p50_ms'] / ms:.2f}x fp32)"


def markdown(doc: dict) -> str:
    env = doc["environment"]
    lines = [f"# Deployment benchmark: does int8 pay? ({doc['mode']})", "",
             provenance_line(env["provenance"]),
             f"CPU class {env['cpu_class']} (int8 flags: {', '.join(env['cpu_int8_flags']) or 'none'}); threads "
             f"{doc['threads']}; load average over the run {doc['load']} (a loaded machine gives slow, noisy "
             f"timings). Command: `{doc['command']}`.", ""]
    for res, per in doc["models"].items():
        d, p = per["dense"], per["pruned"]
        lines += [f"## {res}: {doc['data'][res]}", "",
                  f"Training: {doc['training'][res]}.", "",
                  "| | dense | pruned 75% |", "|---|---:|---:|",
                  f"| params / MACs | {d['params'] / 1e6:.2f} M / {d['macs'] / 1e6:.0f} M | "
                  f"{p['params'] / 1e6:.2f} M / {p['macs'] / 1e6:.1f} M |"]
        for k, label in (("safetensors", "model.safetensors"), ("onnx_fp32", "ONNX fp32 file"),
                         ("onnx_int8", "ONNX int8 file")):
            lines.append(f"| {label} | {_mb(d['sizes'][k])} | {_mb(p['sizes'][k])} |")
        for rt, label in ((FP32, "ONNX Runtime fp32"), (INT8, "ONNX Runtime int8"), (PYTORCH, "PyTorch eager fp32")):
            for b in ("1", "32"):
                cell = [f"{m['latency'][rt][b]['p50_ms']:.3f} ms ({m['latency'][rt][b]['img_per_s']:,.0f} img/s)"
                        for m in (d, p)]
                lines.append(f"| {label} p50 @{b} | {cell[0]} | {cell[1]} |")
        if any(INT8_FULL in m["latency"] for m in (d, p)):
            for b in ("1", "32"):
                cell = [_full_cell(m["latency"], b) for m in (d, p)]
                lines.append(f"| ONNX Runtime int8, every layer p50 @{b} | {cell[0]} | {cell[1]} |")
        for b in ("1", "32"):
            lines.append(f"| **int8 speed-up vs fp32 (ORT) @{b}** | {d['int8_speedup'][b]:.2f}x | "
                         f"{p['int8_speedup'][b]:.2f}x |")
        for rt, label in ((FP32, "top-1 fp32"), (INT8, "top-1 int8")):
            lines.append(f"| {label} ({d['accuracy'][rt]['n']:,} test images) | {d['accuracy'][rt]['top1']:.2f}% | "
                         f"{p['accuracy'][rt]['top1']:.2f}% |")
        lines.append(f"| int8 top-1 drop | {d['top1_drop']:+.2f} pt | {p['top1_drop']:+.2f} pt |")
        lines.append(f"| int8 settings | {d['quantization']['label']} | {p['quantization']['label']} |")
        lines.append(f"| layers kept fp32 by the guard | {len(d['guard']['fp32_nodes'])} | "
                     f"{len(p['guard']['fp32_nodes'])} |")
        lines.append("| first layers kept fp32 for speed | " + " | ".join(
            str((m.get("mixed") or {}).get("fp32_prefix", "-")) for m in (d, p)) + " |")
        lines.append(f"| **deploy artifact** | {d['deploy']['choice']} | {p['deploy']['choice']} |")
        lines += ["", *(f"- {n}: {m['deploy']['reason']}" for n, m in per.items()),
                  *(f"- {n}, int8 variants: {m['mixed']['summary']}" for n, m in per.items() if m.get("mixed")), ""]
    g = doc["goals"]
    lines += ["## Goals (reported, not asserted)", "",
              f"| model | int8 speed-up @1 / @32 | goal {g['speedup_goal']}x (224) | top-1 drop | goal <= "
              f"{g['accuracy_goal_pt']} pt | deployed | never a slower int8 |", "|---|---:|---|---:|---|---|---|"]
    yn = lambda v: "-" if v is None else ("yes" if v else "**no**")  # noqa: E731
    for name, r in g["models"].items():
        met = None if "speedup_met_b1" not in r else r["speedup_met_b1"] and r["speedup_met_b32"]
        lines.append(f"| {name} | {r['int8_speedup_b1']:.2f}x / {r['int8_speedup_b32']:.2f}x | {yn(met)} | "
                     f"{r['top1_drop']:+.2f} | {yn(r['accuracy_met'])} | {r['deploy']} | "
                     f"{'yes (within noise)' if r.get('int8_within_noise') else yn(r['never_ships_slower_int8'])} |")
    lines += ["", f"Never a slower int8: the deployed int8 model is not slower than fp32 at batch 1 by more than the "
              f"deploy decision's noise band ({g['noise']:.2f}x) in this table's own re-measurement."]
    q = doc["settings_reason"]
    lines += ["", f"int8 settings on this machine: {q}.", ""]
    if doc.get("sweep"):
        lines += ["## int8 type combinations on this CPU (dense models, per-channel QDQ)", "",
                  "ONNX Runtime int8 speed-up over fp32 (fp32 and every variant timed interleaved) and, where "
                  "measured, the top-1 drop against fp32 on the held-out slice (no guard); the column the per-CPU "
                  "table picks is marked.", "", "| input | " + " | ".join(f"{k} @1 / @32" for k in SWEEP)
                  + " | fp32 p50 @1 / @32 |", "|---|" + "---:|" * (len(SWEEP) + 1)]
        chosen = doc["models"][next(iter(doc["models"]))]["dense"]["quantization"]["label"]
        for res, sw in doc["sweep"].items():
            cells = [f"{'**' if k == chosen else ''}{sw[k]['speedup']['1']:.2f}x / {sw[k]['speedup']['32']:.2f}x"
                     f"{'**' if k == chosen else ''}"
                     + (f" ({-sw[k]['top1_drop']:+.2f} pt)" if "top1_drop" in sw[k] else "") for k in SWEEP]
            lines.append(f"| {res} | " + " | ".join(cells) + f" | {sw[FP32]['p50_ms']['1']:.3f} / "
                         f"{sw[FP32]['p50_ms']['32']:.2f} ms |")
        lines.append("")
    if doc.get("round_to"):
        lines += ["## Channel rounding (round_to)", "", doc["round_to"]["recommendation"]["text"] + ". Details: "
                  f"`{doc['round_to_file']}`.", ""]
    if doc["mode"] == "quick":
        lines += ["*Quick mode: briefly trained models, fewer test images and timed rounds; the pipeline's "
                  "behaviour is real, the absolute figures are not the reference results.*", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="~10-15 min on 2 cores (see the module docstring)")
    ap.add_argument("--data-dir", help="Fashion-MNIST IDX directory (default: $PRUNEKIT_DATA, /work/shared/...)")
    ap.add_argument("--sizes", default="28,224", help="input sizes to run (28 and/or 224)")
    ap.add_argument("--threads", type=int, default=0, help="threads for every runtime (default: all available)")
    ap.add_argument("--repeats", type=int, help="timed rounds per runtime and batch size")
    ap.add_argument("--no-round-to", dest="round_to", action="store_false", help="skip the round_to study")
    ap.add_argument("--no-sweep", dest="sweep", action="store_false",
                    help="skip timing every int8 type combination (U8S8, S8S8, ...) on the dense models")
    ap.add_argument("--retrain", action="store_true", help="ignore models left by a previous run")
    ap.add_argument("--out", help="output prefix (default benchmarks/results/deploy, quick: deploy_quick)")
    args = ap.parse_args(argv)
    from prunekit.deploy.cpu import settings_for
    from prunekit.inference.bench import available_cores

    mode_name = "quick" if args.quick else "full"
    mode = dict(MODES[mode_name])
    if args.repeats:
        mode["repeats"] = args.repeats
    threads = args.threads or available_cores()
    torch.set_num_threads(threads)
    data_dir = find_data_dir(args.data_dir)
    t0 = time.perf_counter()
    env = environment(torch.device("cpu"))
    doc = {"created": now(), "mode": mode_name, "command": command_line(), "threads": threads, "config": {
        k: v for k, v in mode.items() if not isinstance(k, int)}, "data": {}, "training": {}, "models": {}}
    with LoadSampler(30) as load:
        for size in (int(s) for s in args.sizes.split(",")):
            m = mode[size]
            res = f"{size}x{size}x{1 if size == 28 else 3}"
            train_bundle, eval_bundle, what = data_for(size, m, data_dir)
            doc["data"][res] = what
            work = WORK / f"deploy_{mode_name}" / "_".join(map(str, (size, *m.values())))  # settings in the name
            dirs = train_models(size, m, work, train_bundle, args.retrain)
            doc["training"][res] = (f"dense {m['epochs']} epochs, then {SPARSITY:.0%} of the pointwise channels pruned "
                                    f"one-shot (L1) + surgery + {m['ft_epochs']} fine-tuning epochs, on "
                                    f"{len(train_bundle.train):,} images (batch {m['batch']}, lr {m['lr']})"
                                    + (" - briefly trained" if size != 28 or mode_name == "quick" else ""))
            doc["models"][res] = {name: deploy_model(f"{res} {name}", d, eval_bundle, mode, threads)
                                  for name, d in dirs.items()}
            if args.sweep:
                log(f"{res} dense: int8 type combinations on this CPU")
                doc.setdefault("sweep", {})[res] = sweep(dirs["dense"], eval_bundle, mode, threads)
            del train_bundle, eval_bundle
        doc["settings_reason"] = settings_for().reason
        doc["goals"] = goals(doc["models"])
        if args.round_to:
            rt = round_to_bench.run((28, 224), threads, mode["round_to_repeats"])
            rt["environment"] = env
            rt_prefix = RESULTS / ("round_to_quick" if args.quick else "round_to")
            write_results(rt_prefix, rt, round_to_bench.markdown(rt))
            doc["round_to"] = {"recommendation": rt["recommendation"], "load": rt["load"]}
            doc["round_to_file"] = str(rt_prefix.with_suffix(".md").relative_to(RESULTS.parent.parent))
    doc["load"] = load.summary()
    doc["environment"] = env  # read at the start: the commit and tree that ran, not what HEAD is at the end
    doc["seconds"] = round(time.perf_counter() - t0, 1)
    prefix = Path(args.out) if args.out else RESULTS / ("deploy_quick" if args.quick else "deploy")
    j, md = write_results(prefix, doc, markdown(doc))
    print(markdown(doc))
    print(f"wrote {j} and {md} ({doc['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
