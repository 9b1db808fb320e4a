"""Latency of one convolution as a function of its channel count, on this machine's runtimes.

Pruning leaves arbitrary channel counts; CPU kernels are tuned for multiples of a vector width. This measures a
pointwise (1x1) convolution + ReLU with C inputs and C outputs, and a 3x3 depthwise convolution with C channels,
for every C in a range, on ONNX Runtime fp32 and PyTorch eager, at two feature-map sizes and batch 1 and 32.
The latency budget's table (prunekit/inference/latency.py, ALIGN) follows from it.

    python benchmarks/channel_counts.py              # C = 8..72, 14x14 and 56x56, batch 1 and 32
    python benchmarks/channel_counts.py --quick      # C = 24..40
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from prunekit.inference.bench import available_cores
    from prunekit.inference.latency import LayerSpec, Timer

    threads = args.threads or available_cores()
    torch.set_num_threads(threads)
    env = C.environment(torch.device("cpu"))
    counts = list(range(24, 41)) if args.quick else list(range(8, 73))
    rows = []
    t0 = time.perf_counter()
    with C.LoadSampler() as ls:
        for hw in (14, 56):
            for batch in (1, 32):
                for runtime in ("onnxruntime-fp32", "pytorch"):
                    timer = Timer(runtime, batch, threads, max_seconds=0.5, repeats=30)
                    for c in counts:
                        for kind, groups in (("pointwise", 1), ("depthwise", c)):
                            k = (1, 1) if kind == "pointwise" else (3, 3)
                            spec = LayerSpec("x", "conv", c, c, groups, k, (1, 1), (k[0] // 2, k[1] // 2), (1, 1),
                                             False, (hw, hw))
                            ms = timer.model_ms(spec.module(c, c), spec.example(batch, c))
                            rows.append({"hw": hw, "batch": batch, "runtime": runtime, "kind": kind, "channels": c,
                                         "ms": ms})
                    C.log(f"{hw}x{hw} batch {batch} {runtime}: done")
    doc = {"command": C.command_line(), "environment": env, "provenance": env["provenance"], "threads": threads,
           "rows": rows, "load": ls.summary(), "seconds": round(time.perf_counter() - t0, 1)}
    lines = ["# Convolution latency vs channel count", "", C.provenance_line(doc["provenance"]), "",
             f"{threads} threads. For each setting: the median over multiples of 8 and over other counts of the "
             "latency *per channel* (ms / C for depthwise, ms / C^2 x 1000 for pointwise), and their ratio.", "",
             "| kind | feature map | batch | runtime | per-channel cost, multiples of 8 | other counts | other / "
             "multiples of 8 |", "|---|---|---:|---|---:|---:|---:|"]
    for kind in ("pointwise", "depthwise"):
        for hw in (14, 56):
            for batch in (1, 32):
                for runtime in ("onnxruntime-fp32", "pytorch"):
                    sel = [r for r in rows if (r["kind"], r["hw"], r["batch"], r["runtime"]) == (kind, hw, batch, runtime)]
                    norm = (lambda r: 1000 * r["ms"] / r["channels"] ** 2) if kind == "pointwise" else \
                        (lambda r: r["ms"] / r["channels"])
                    a = float(np.median([norm(r) for r in sel if r["channels"] % 8 == 0]))
                    b = float(np.median([norm(r) for r in sel if r["channels"] % 8]))
                    lines.append(f"| {kind} | {hw}x{hw} | {batch} | {runtime} | {a:.4g} | {b:.4g} | {b / a:.2f}x |")
    lines += ["", f"Load average {doc['load']}; {doc['seconds'] / 60:.1f} min."]
    prefix = Path(args.out) if args.out else C.RESULTS / ("channel_counts_quick" if args.quick else "channel_counts")
    C.write_results(prefix, doc, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
