"""Size, MACs, latency and throughput of model directories on CPU: PyTorch eager fp32, ONNX Runtime fp32 and
ONNX Runtime int8, side by side (ratios relative to the first --model).

For each model: parameters, MACs, file sizes (model.safetensors, fp32 ONNX, int8 ONNX — exported and
quantized into MODEL/.bench/ with the int8 settings `prunekit quantize` picks for this CPU, reused while the
model is unchanged), batch latency p50/p90 at the smallest --batch and throughput (images/s) at the largest,
and int8's speed-up over fp32 within ONNX Runtime (the two are timed in 10 alternating rounds, each at least
25 ms of runs, so a fast model gets more than --repeats). Warm-up runs precede the timed runs; --threads sets
torch.set_num_threads and ONNX Runtime's intra-op threads. The JSON records the machine (CPU, its int8 class,
cores, load average, platform, versions). Ratios between runtimes are not given: compare within a row. Close
other programs for stable numbers.

example:
  prunekit bench --model runs/dense/model --model runs/shrunk
  prunekit bench --model runs/shrunk --batch 1,64 --threads 4 --repeats 200 --json
"""

from __future__ import annotations

import argparse
import sys

from .common import add_json_arg, positive_float, positive_int, print_json


def _batches(s: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in s.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--batch must be comma-separated integers, got '{s}'") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"--batch sizes must be >= 1, got '{s}'")
    return tuple(sorted(set(vals)))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", action="append", required=True, metavar="DIR",
                   help="model directory; repeat to compare (ratios are relative to the first)")
    p.add_argument("--batch", type=_batches, default=(1, 32), help="batch sizes, e.g. 1,32 (default): latency at "
                   "the smallest, throughput at the largest")
    p.add_argument("--threads", type=positive_int("--threads"), help="threads (default: all available cores)")
    p.add_argument("--repeats", type=positive_int("--repeats"), default=50,
                   help="timed runs per batch (default 50; ONNX Runtime: at least)")
    p.add_argument("--warmup", type=positive_int("--warmup", allow_zero=True), default=5,
                   help="untimed runs first (default 5)")
    p.add_argument("--max-seconds", type=positive_float("--max-seconds"), default=20.0,
                   help="stop timing one runtime/batch after this long (at least 3 runs; default 20)")
    p.add_argument("--calib-samples", type=positive_int("--calib-samples"), default=256,
                   help="int8 calibration images (default 256)")
    p.add_argument("--cache-dir", help="where exported/quantized files go (default: MODEL/.bench)")
    p.add_argument("--out", help="also write the JSON result to this file")
    add_json_arg(p)


def run(args: argparse.Namespace) -> int:
    from ..deploy.metadata import check_output
    from ..inference.bench import BenchSettings, bench, format_table
    from ..io import write_json

    if args.out:  # a directory or an unwritable place is reported before minutes of benchmarking
        check_output(args.out, overwrite=True, what="--out")
    s = BenchSettings(batches=args.batch, threads=args.threads, repeats=args.repeats, warmup=args.warmup,
                      max_seconds=args.max_seconds, calib_samples=args.calib_samples, cache_dir=args.cache_dir)
    res = bench(args.model, s, log=None if args.json else lambda m: print(m, file=sys.stderr))
    if args.out:
        write_json(args.out, res)
    if args.json:
        print_json(res)
    else:
        print(format_table(res))
    return 0
