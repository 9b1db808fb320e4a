"""Does this machine time a small model slower right after sustained load, and for how long?

The latency budget's check follows training. This script times a 75 %-pruned and a dense MobileNet V1 0.5
(random weights, 28x28, batch 32, ORT fp32, one session alive at a time) on a quiet machine, then runs
``--load-seconds`` of PyTorch training *in another process*, then times them again right away and after each of
``--waits`` seconds of idling. If the first measurement after the load is slower and the later ones are not, the
machine itself (frequency, the host's scheduling) is slower for that long, whatever process is timing.

    python benchmarks/settle_after_load.py              # ~1 min
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, environment, log, provenance_line, write_results  # noqa: E402

LOAD = """
import sys, time, torch
net = torch.nn.Sequential(*[torch.nn.Conv2d(32, 32, 3, padding=1) for _ in range(6)])
x = torch.randn(64, 32, 28, 28); t0 = time.time()
while time.time() - t0 < float(sys.argv[1]):
    net(x).sum().backward()
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--load-seconds", type=float, default=20.0)
    ap.add_argument("--waits", default="0,5,10,20", help="idle seconds after the load before each measurement")
    ap.add_argument("--out", default=str(RESULTS / "settle_after_load"))
    args = ap.parse_args(argv)
    from prunekit.inference.bench import available_cores
    from prunekit.inference.latency import Timer, measure_models
    from prunekit.models import create_model
    from prunekit.pruning import OneShot, PruningConfig, prune_, strip

    torch.manual_seed(0)
    dense = create_model("mobilenet_v1", width=0.5, num_classes=10, in_channels=1, small_input=True).eval()
    p = prune_(strip(dense, copy=True), PruningConfig(schedule=OneShot(0.75), round_to=16), (1, 28, 28))
    p.step(0)
    small = p.shrink(check=False).model.eval()
    timer = Timer("onnxruntime-fp32", 32, available_cores()).careful()
    env = environment(torch.device("cpu"))
    rows = []

    def measure(label: str) -> None:
        a, b = measure_models([small, dense], (1, 28, 28), timer)
        rows.append({"when": label, "small_ms": a, "dense_ms": b, "ratio": a / b})
        log(f"{label}: pruned {a:.3f} ms, dense {b:.3f} ms, ratio {a / b:.3f}")

    measure("quiet, before the load")
    waits = [float(w) for w in args.waits.split(",")]
    done = 0.0
    subprocess.run([sys.executable, "-c", LOAD, str(args.load_seconds)], check=True)
    for w in waits:
        time.sleep(max(0.0, w - done))
        done = w
        measure(f"{w:g} s after {args.load_seconds:g} s of training in another process")
    doc = {"command": " ".join(sys.argv), "environment": env, "provenance": env.get("provenance"),
           "settings": {"load_seconds": args.load_seconds, "waits": waits, "threads": timer.threads}, "rows": rows}
    lines = ["# Timing right after sustained load", "", provenance_line(doc["provenance"]), "",
             f"MobileNet V1 0.5 (random weights), dense and 75 %-pruned (round_to 16), 28x28, batch 32, ORT fp32, "
             f"{timer.threads} threads, timed in alternation with one session alive at a time (3 rounds). The "
             f"load: {args.load_seconds:g} s of PyTorch training in a separate process.", "",
             "| when | pruned (ms) | dense (ms) | pruned / dense |", "|---|---:|---:|---:|"]
    lines += [f"| {r['when']} | {r['small_ms']:.3f} | {r['dense_ms']:.3f} | {r['ratio']:.3f} |" for r in rows]
    j, m = write_results(Path(args.out), doc, "\n".join(lines) + "\n")
    log(f"wrote {j} and {m}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
