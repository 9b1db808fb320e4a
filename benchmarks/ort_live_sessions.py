"""Does timing one ONNX Runtime model while another one's session is alive distort the comparison?

ONNX Runtime's intra-op thread pools spin after each run (``session.intra_op.allow_spinning``, on by default).
When two sessions are alive and timed in alternation (the fair way to compare fp32 with int8, or a pruned model
with the dense one, on a machine whose speed drifts), the idle one's spinning threads can take the cores of the
one being timed. This script times the same pairs three ways, ``--reps`` times each, alternating the methods:

* ``live, run by run``: both sessions alive, runs alternating one by one (prunekit's timing before this
  benchmark; ``bench.time_interleaved``);
* ``live, rounds``: both sessions alive, blocks of runs alternating (the budget check's ``Timer`` before it);
* ``one at a time``: alternating blocks, each session loaded for its block and released before the next is
  loaded (``bench.time_alternating``, what prunekit does now).

Pairs: MobileNet V1 (``--width``, random weights: they do not change latency) on 28x28x1 at batch 32, dense and
75 %-pruned (uniform, round_to 16), ORT fp32 and ORT int8 (QDQ, settings for this CPU): fp32/int8 of each, and
pruned/dense in fp32. Reported per method: each repetition's ratio and their spread (max/min).

    python benchmarks/ort_live_sessions.py                 # ~3 min on 2 cores
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, LoadSampler, environment, log, provenance_line, write_results  # noqa: E402


def _sessions(width: float, threads: int, batch: int):
    from prunekit.inference.latency import _onnx_bytes, _quantized
    from prunekit.models import create_model
    from prunekit.pruning import OneShot, PruningConfig, prune_, strip

    torch.manual_seed(0)
    dense = create_model("mobilenet_v1", width=width, num_classes=10, in_channels=1, small_input=True).eval()
    m = strip(dense, copy=True)
    p = prune_(m, PruningConfig(schedule=OneShot(0.75), round_to=16), (1, 28, 28))
    p.step(0)
    pruned = p.shrink(check=False).model.eval()
    x = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    blobs = {}
    for name, model in (("dense", dense), ("pruned", pruned)):
        blobs[f"{name} fp32"] = _onnx_bytes(model, x)
        blobs[f"{name} int8"] = _quantized(blobs[f"{name} fp32"], x)

    def factory(key: str):
        from prunekit.deploy.onnx import ort_session

        def load():
            sess = ort_session(blobs[key], threads=threads, what=key)
            feed = {sess.get_inputs()[0].name: x.numpy()}
            return lambda: sess.run(None, feed)

        return load

    return factory


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (default: every available core)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=60, help="timed runs per model and repetition")
    ap.add_argument("--out", default=str(RESULTS / "ort_live_sessions"))
    args = ap.parse_args(argv)
    from prunekit.inference.bench import (
        alternating_rounds,
        available_cores,
        time_alternating,
        time_interleaved,
        time_runs,
    )

    threads = args.threads or available_cores()
    factory = _sessions(args.width, threads, args.batch)
    pairs = [("dense fp32", "dense int8"), ("pruned fp32", "pruned int8"), ("pruned fp32", "dense fp32")]

    def live_by_run(a, b):
        fa, fb = factory(a)(), factory(b)()
        t = time_interleaved({a: fa, b: fb}, 5, args.repeats, 30.0)
        return float(np.median(t[a])), float(np.median(t[b]))

    def live_rounds(a, b):  # the same alternating rounds, but both sessions loaded up front and kept alive
        fa, fb = factory(a)(), factory(b)()
        per = max(3, args.repeats // 3)
        ra, rb = alternating_rounds([lambda: fa, lambda: fb], 3,
                                    lambda run, _: np.median(time_runs(run, 2, per, 10.0)))
        return float(np.median(ra)), float(np.median(rb))

    def one_at_a_time(a, b):
        t = time_alternating({a: factory(a), b: factory(b)}, 5, args.repeats, 30.0)
        return float(np.median(t[a])), float(np.median(t[b]))

    methods = {"live, run by run": live_by_run, "live, rounds": live_rounds, "one at a time": one_at_a_time}
    env = environment(torch.device("cpu"))
    t0 = time.perf_counter()
    rows = []
    with LoadSampler() as ls:
        for a, b in pairs:
            per: dict[str, list] = {k: [] for k in methods}
            for rep in range(args.reps):
                for name, fn in methods.items():
                    ta, tb = fn(a, b)
                    gc.collect()
                    per[name].append({"a_ms": 1e3 * ta, "b_ms": 1e3 * tb, "ratio": ta / tb})
                    log(f"{a} / {b}, {name}, rep {rep}: {1e3 * ta:.3f} / {1e3 * tb:.3f} ms = {ta / tb:.2f}")
            for name, reps in per.items():
                r = [x["ratio"] for x in reps]
                rows.append({"pair": f"{a} / {b}", "method": name, "reps": reps, "ratios": r,
                             "spread": max(r) / min(r)})
    doc = {"command": " ".join(sys.argv), "environment": env, "provenance": env.get("provenance"),
           "settings": {"width": args.width, "threads": threads, "batch": args.batch, "reps": args.reps,
                        "repeats": args.repeats}, "rows": rows, "load": ls.summary(),
           "seconds": round(time.perf_counter() - t0, 1)}
    lines = ["# Timing ONNX Runtime models with another session alive", "", provenance_line(doc["provenance"]), "",
             f"MobileNet V1 {args.width} (random weights), 28x28x1, batch {args.batch}, {threads} ORT threads, "
             f"{args.repeats} timed runs per model per repetition; {args.reps} repetitions, the three methods "
             f"alternating. Ratio = first / second model's median time (fp32 / int8: the int8 speed-up). "
             f"Load average over the run {doc['load']}; {doc['seconds']:.0f} s.", "",
             "| pair | method | ratio per repetition | spread (max / min) | ms per repetition (first / second) |",
             "|---|---|---|---:|---|"]
    for r in rows:
        ms = "; ".join(f"{x['a_ms']:.3f} / {x['b_ms']:.3f}" for x in r["reps"])
        lines.append(f"| {r['pair']} | {r['method']} | {', '.join(f'{v:.2f}' for v in r['ratios'])} | "
                     f"{r['spread']:.2f} | {ms} |")
    lines += ["", "A spread near 1.00 means the method gives the same answer every time; the methods' ratios differ "
              "from one another where the idle session's threads compete with the timed one. Random weights and "
              "synthetic calibration: this is about the timing method, not about int8 (whose speed-up on trained "
              "models is in deploy_quick.md)."]
    j, m = write_results(Path(args.out), doc, "\n".join(lines) + "\n")
    log(f"wrote {j} and {m}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
