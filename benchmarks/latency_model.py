"""How well the measured latency model predicts a pruned model's latency on this machine.

For each model (MobileNet V1 at 28x28x1 and 224x224x3, torchvision ResNet-50 and MobileNet V2 at 224x224) and
batch size (1 and 32): build the per-layer latency table on ONNX Runtime fp32 (all cores), calibrate it on
the dense model and uniform pruning at prunekit.inference.latency.ANCHORS (as the budget search does), then compare
its prediction with the measured latency of the physically pruned model for those (in-sample), uniform pruning at
37.5/62.5% and three random per-layer allocations (out of sample).
Channel counts are multiples of the alignment the search uses on this CPU (prunekit.inference.latency.align()).
Goal: within 10%.

    python benchmarks/latency_model.py            # every model, batch 1 and 32
    python benchmarks/latency_model.py --quick    # coarser tables, fewer allocations (what is cut: see the file)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

OUT_OF_SAMPLE = (0.375, 0.625)  # uniform prunings between the calibration's anchors (with random allocations)

MODELS = {
    "mobilenet_v1_28": ("mobilenet_v1", dict(width=1.0, num_classes=10, in_channels=1, small_input=True), (1, 28, 28),
                        "pointwise"),
    "mobilenet_v1_224": ("mobilenet_v1", dict(width=1.0, num_classes=1000), (3, 224, 224), "pointwise"),
    "resnet50_224": ("torchvision:resnet50", {}, (3, 224, 224), "all"),
    "mobilenet_v2_224": ("torchvision:mobilenet_v2", {}, (3, 224, 224), "all"),
}


def model_and_groups(key: str):
    """(dense model with random weights, the pruner whose groups the allocations size, input shape) of ``key``."""
    from prunekit.models import create_model
    from prunekit.pruning import OneShot, PruningConfig, prune_, strip

    arch, kw, shape, layers = MODELS[key]
    torch.manual_seed(0)
    model = create_model(arch, **kw).eval()
    pruner = prune_(model, PruningConfig(schedule=OneShot(0.5), layers=layers), shape)
    return strip(model, copy=True), pruner, shape


def allocations(sizes: np.ndarray, a: int, n_random: int) -> dict[str, np.ndarray]:
    """The allocations timed (keep counts per group, multiples of ``a``): dense, uniform at the anchors and the
    out-of-sample fractions, and ``n_random`` random ones (seed 0)."""
    from prunekit.inference.latency import ANCHORS

    def aligned(keep):
        return np.minimum(sizes, np.maximum(a, np.round(keep / a) * a)).astype(int)

    rng = np.random.default_rng(0)
    configs = {"dense": sizes.copy()}
    for s in sorted({*ANCHORS, *OUT_OF_SAMPLE}):
        configs[f"uniform {100 * s:g}%"] = aligned(sizes * (1 - s))
    for i in range(n_random):
        configs[f"random {i + 1}"] = aligned(sizes * (1 - rng.uniform(0, 0.8, len(sizes))))
    return configs


def run_one(key: str, batch: int, grid: int, n_random: int, threads: int) -> dict:
    from prunekit import shrink
    from prunekit.inference.latency import (
        ANCHORS,
        CALIBRATION_PASSES,
        LatencyCost,
        LatencyTable,
        Timer,
        align,
        measure_models,
    )
    from prunekit.pruning.budget import ChannelFractions

    dense_model, pruner, shape = model_and_groups(key)
    sizes = np.array([g.size for g in pruner.groups])
    a = align()
    timer = Timer("onnxruntime-fp32", batch, threads, max_seconds=1.0, repeats=30, rounds=5)

    def pruned(keep):
        removed = {g.name: list(range(int(k), g.size)) for g, k in zip(pruner.groups, keep, strict=True)
                   if k < g.size}
        return shrink(dense_model, shape, removed, graph=pruner.graph, check=False).model.eval()

    table = LatencyTable(Timer("onnxruntime-fp32", batch, threads))
    t0 = time.perf_counter()
    cost = LatencyCost(dense_model, shape, ChannelFractions(pruner.graph, pruner.groups), table,
                       grid=grid, round_to=a, progress=C.log,
                       build=pruned)
    table_s = time.perf_counter() - t0
    configs = allocations(sizes, a, n_random)
    in_sample = {"dense"} | {f"uniform {100 * s:g}%" for s in ANCHORS}
    rows = []
    # every allocation timed interleaved with the others (and the dense model): the machine's drift cancels in
    # their ratios; each is put on the calibration's scale through the dense model (measured x dense at
    # calibration / dense now)
    names = list(configs)
    times = measure_models([pruned(configs[n]) if n != "dense" else dense_model for n in names], shape, timer,
                           passes=CALIBRATION_PASSES)  # each model's fastest pass, as the calibration takes them
    scale = cost.dense_measured / times[names.index("dense")]
    # the same, through every calibration model (geometric mean of calibrated / now): a slow or fast phase that
    # caught the dense model alone in one of the two measurements moves every row by the same factor above
    calibrated = {c["model"]: c["measured_ms"] for c in cost.calibration}
    now = {"dense": times[names.index("dense")], **{f"uniform {a:g}": times[names.index(f"uniform {100 * a:g}%")]
                                                    for a in ANCHORS}}
    drift = float(np.exp(np.mean([np.log(calibrated[k] / now[k]) for k in now if k in calibrated])))
    for name, keep in configs.items():
        measured = times[names.index(name)] * scale
        predicted = cost(keep)
        corrected = times[names.index(name)] * drift
        rows.append({"config": name, "predicted_ms": predicted, "measured_ms": measured,
                     "error": (predicted - measured) / measured, "measured_drift_ms": corrected,
                     "error_drift": (predicted - corrected) / corrected})
        C.log(f"{key} b{batch} {name}: predicted {predicted:.3f} ms, measured {measured:.3f} ms "
              f"({100 * rows[-1]['error']:+.1f}%; {100 * rows[-1]['error_drift']:+.1f}% through all anchors)")
    return {"model": key, "batch": batch, "layers": len(cost.specs), "grid": grid, "table_seconds": round(table_s, 1),
            "measured_in_table": table.measured, "align": a, "slope": cost.slope, "intercept_ms": cost.intercept,
            "calibration": cost.calibration, "rows": rows, "in_sample": sorted(in_sample),
            "max_abs_error": max(abs(r["error"]) for r in rows),
            "max_abs_error_out_of_sample": max(abs(r["error"]) for r in rows
                                               if r["config"] not in in_sample),
            "drift": drift, "max_abs_error_drift_out_of_sample": max(abs(r["error_drift"]) for r in rows
                                                                     if r["config"] not in in_sample)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="grid 4 instead of 6, two random allocations instead of 3")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--threads", type=int, default=0, help="default: all available cores")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from prunekit.inference.bench import available_cores
    from prunekit.inference.latency import ANCHORS, CALIBRATION_PASSES, PASS_PAUSE

    threads = args.threads or available_cores()
    torch.set_num_threads(threads)
    env = C.environment(torch.device("cpu"))
    results = []
    t_all = time.perf_counter()
    with C.LoadSampler() as ls:
        for key in args.models.split(","):
            for b in (int(x) for x in args.batches.split(",")):
                results.append(run_one(key, b, 4 if args.quick else 6, 2 if args.quick else 3, threads))
    doc = {"command": C.command_line(), "environment": env, "provenance": env["provenance"], "threads": threads,
           "results": results, "load": ls.summary(), "seconds_total": round(time.perf_counter() - t_all, 1),
           "quick": args.quick}
    lines = ["# Latency model accuracy (ONNX Runtime fp32, this machine)", "", C.provenance_line(doc["provenance"]),
             "", f"Per-layer tables on a {'4x4' if args.quick else '6x6'} grid of input x output channels, "
             f"{threads} threads; predicted = the piecewise-linear curve from the sum of interpolated layer latencies "
             f"to the latency measured on the dense model and uniform {'/'.join(f'{100 * a:g}' for a in ANCHORS)}% (the "
             "calibration the budget search "
             f"makes, each model's fastest of {CALIBRATION_PASSES} passes {PASS_PAUSE:g} s apart; those rows are "
             "in-sample, and their error is the "
             "timing's own noise; slope and intercept: the least-squares line, reported); measured = the physically "
             "pruned models exported to ONNX, timed again in the same way with the dense model (the ratio to it, "
             "times the calibration's dense latency: what a budget's check does). *Through all anchors*: the same "
             "timings put on the calibration's scale by the geometric mean of calibrated / re-timed over the dense "
             "model and the anchors instead of the dense model alone (a slow or fast phase that caught the dense "
             "model in one of the two measurements moves every row of the first error alike). Channel counts "
             f"are multiples of {results[0]['align'] if results else '?'} (what the search chooses on this CPU). "
             "Goal: within 10%.", "",
             "| model | batch | allocation | predicted (ms) | measured (ms) | error | error, through all anchors |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for r in results:
        for row in r["rows"]:
            lines.append(f"| {r['model']} | {r['batch']} | {row['config']} | {row['predicted_ms']:.3f} | "
                         f"{row['measured_ms']:.3f} | {100 * row['error']:+.1f}% | "
                         f"{100 * row['error_drift']:+.1f}% |")
    lines += ["", "| model | batch | max abs error | max abs error, out of sample | out of sample, through all "
              "anchors | slope | intercept (ms) | table build (s) | layer timings |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['batch']} | {100 * r['max_abs_error']:.1f}% | "
              f"{100 * r['max_abs_error_out_of_sample']:.1f}% | {100 * r['max_abs_error_drift_out_of_sample']:.1f}% | "
              f"{r['slope']:.3f} | {r['intercept_ms']:.3f} | {r['table_seconds']} | {r['measured_in_table']} |"
              for r in results]
    lines += ["", f"Total {doc['seconds_total'] / 60:.1f} min; load average {doc['load']}."]
    prefix = Path(args.out) if args.out else C.RESULTS / ("latency_model_quick" if args.quick else "latency_model")
    j, m = C.write_results(prefix, doc, "\n".join(lines) + "\n")
    C.log(f"wrote {j} and {m}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
