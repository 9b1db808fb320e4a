"""int8 static quantization of an fp32 ONNX model (from `prunekit export`) with ONNX Runtime, and the choice
of the file to deploy, measured on this machine.

QDQ format, per-channel weight scales, calibrated on --calib-samples images of the training split
preprocessed exactly like training. The activation/weight types suit this machine's CPU (detected from
/proc/cpuinfo: U8S8 with VNNI/AMX, U8S8 + reduce_range on x86 without VNNI, S8S8 on ARM); --cpu,
--activations, --weights and --reduce-range override that, and the choice and its reason are stored in the
int8 model's metadata. Then, on the held-out slice (the first --eval-samples test images), fp32 and int8 top-1
are compared; when int8 loses more than --tolerance points, 8-bit weights are measured first where this CPU's
settings chose 7-bit ones (and --reduce-range was not given), then the layers most sensitive to quantization
(measured) are kept in fp32 until it does not (--no-guard: neither). int8 only where it is faster: variants that
keep the first 1, 2, 4 layers in fp32 are timed against the fully int8 model, and the fastest is kept when it beats it
(--fp32-prefix 0: off). Both files are timed with ONNX Runtime on this machine (batch 1 and --throughput-batch,
interleaved), and the deploy artifact is chosen for --objective (default: the faster at batch 1 within the
tolerance): both files are kept, the last line says which one to ship and why.

example:
  prunekit quantize --model model.onnx --data bundled --out model.int8.onnx
  prunekit quantize --model model.onnx --data fashion-mnist --data-dir ~/fmnist --method percentile --json
  prunekit quantize --model model.onnx --cpu arm-dotprod --objective int8     # for an ARM board, not this machine
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import (
    add_config_args,
    add_data_args,
    add_json_arg,
    config_flag,
    positive_int,
    print_json,
    run_config,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="fp32 ONNX model exported by `prunekit export`")
    add_data_args(p)
    add_config_args(p)
    config_flag(p, "--calib-samples", "quantize.calib_samples", help="calibration images from the training split "
                "(default 512)")
    config_flag(p, "--method", "quantize.method", help="calibration method (default minmax)")
    config_flag(p, "--per-channel", "quantize.per_channel", help="per-channel weight scales (default: on)")
    p.add_argument("--out", help="int8 model (default: MODEL with .int8.onnx)")
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=64,
                   help="calibration/evaluation batch size (default 64)")
    config_flag(p, "--cpu", "quantize.cpu")
    config_flag(p, "--activations", "quantize.activations")
    config_flag(p, "--weights", "quantize.weights")
    config_flag(p, "--reduce-range", "quantize.reduce_range", help="7-bit weights (default: on for x86 without "
                "VNNI)")
    config_flag(p, "--objective", "quantize.objective", help="deploy artifact: the faster at batch 1 (latency, "
                "default), more img/s (throughput), smaller (size), or fp32/int8 whatever the measurements")
    config_flag(p, "--tolerance", "quantize.tolerance", help="largest int8 top-1 drop in points (default 0.5)")
    config_flag(p, "--min-speedup", "quantize.min_speedup")
    config_flag(p, "--eval-samples", "quantize.eval_samples", help="held-out slice: the first N test images "
                "(default 2000; 0: all)")
    config_flag(p, "--throughput-batch", "quantize.throughput_batch", help="batch size of the throughput "
                "measurement (default 32)")
    config_flag(p, "--guard", "quantize.guard", help="keep the most sensitive layers in fp32 when int8 loses more "
                "than the tolerance (default: on)")
    config_flag(p, "--max-fp32-layers", "quantize.max_fp32_layers")
    config_flag(p, "--fp32-prefix", "quantize.fp32_prefix", help="also time int8 with the first 1, 2, 4, ... (up "
                "to N) layers in fp32 and keep the fastest if it beats fully int8 (default 4; 0: off)")
    config_flag(p, "--threads", "bench.threads", help="threads for the timing (default: all cores)")
    config_flag(p, "--repeats", "bench.repeats", help="timed runs per batch size, in 10 alternating rounds (default 50)")
    p.add_argument("--no-eval", dest="evaluate", action="store_false",
                   help="quantize only: no accuracy check, no guard, no timing, no deploy choice")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    add_json_arg(p)


def run(args: argparse.Namespace) -> int:
    from ..deploy import default_int8_path
    from ..deploy.metadata import check_output
    from ..errors import PrunekitError
    from ..steps import quantize

    src = Path(args.model)
    if src.is_dir():
        raise PrunekitError(f"{src} is a directory; quantize takes an fp32 ONNX file: run `prunekit export --model "
                            f"{src} --out model.onnx` first")
    if src.suffix.lower() != ".onnx" and src.exists():
        raise PrunekitError(f"{src}: quantize takes an fp32 ONNX file (.onnx), exported by `prunekit export`")
    cfg = run_config(args)
    out = Path(args.out) if args.out else default_int8_path(src)
    if out.resolve() == src.resolve():
        raise PrunekitError("--out must differ from --model")
    out = check_output(out, args.overwrite)
    q = cfg.quantize
    log = None if args.json else (lambda m: print(m, file=sys.stderr))
    res = quantize(src, out, cfg.data, q, batch_size=args.batch_size, evaluate=args.evaluate, seed=cfg.seed,
                   bench=cfg.bench, log=log)
    if args.json:
        print_json({**res, "model": str(src), "data": cfg.data.name})
        return 0
    st = res["settings"]
    print(f"int8 {st['label']} QDQ ({q.method} calibration on {res['calib_samples']} {cfg.data.name} training images, "
          f"{'per-channel' if st['per_channel'] else 'per-tensor'} weights) -> {out}")
    print(f"settings: {st['reason']}")
    print(f"size {res['fp32_bytes'] / 1e6:.2f} MB -> {res['bytes'] / 1e6:.2f} MB ({100 * res['size_ratio']:.1f}% of fp32)")
    if args.evaluate:
        g = res["guard"]
        print(f"top-1 on {res['int8']['n']} held-out {cfg.data.name} test images: fp32 {res['fp32']['top1']:.2f}%  "
              f"int8 {res['int8']['top1']:.2f}%  (drop {res['top1_drop']:+.2f} points; same top-1 on "
              f"{res['agreement']:.1f}%)")
        if (res.get("weights") or {}).get("drop_8bit") is not None:
            print(f"weights: {res['weights']['summary']}")
        if len(g["tries"]) > 1:
            print(f"guard: {g['summary']}")
        mixed = res.get("mixed") or {}
        if mixed.get("tried", [])[1:]:
            print(f"mixed precision: {mixed['summary']}")
        print(_latency_table(res["latency"]))
        d = res["deploy"]
        print(f"deploy: {d['choice']} ({d['path']}): {d['reason']}")
    if res.get("note"):
        print(f"note: {res['note']}")
    return 0


def _latency_table(lat: dict) -> str:
    """ONNX Runtime fp32 vs int8 on this machine (p50 ms per batch, img/s)."""
    rows = []
    for name, per in lat.items():
        cells = [f"batch {b}: {s['p50_ms']:.3f} ms ({s['img_per_s']:,.0f} img/s)" for b, s in per.items()]
        rows.append(f"  {name:<17} " + "   ".join(cells))
    return "latency on this machine (p50, interleaved runs):\n" + "\n".join(rows)
