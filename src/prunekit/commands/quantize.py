"""int8 static quantization of an fp32 ONNX model (from `prunekit export`) with ONNX Runtime.

QDQ format, int8 weights with per-channel scales, uint8 activations calibrated on --calib-samples images of
the training split, preprocessed exactly like training (normalised with the mean/std stored in the model's
metadata). Then fp32 and int8 top-1 are measured on the test split and printed with the size ratio. The int8
model keeps the metadata (class names, input, mean/std) and gets its own sidecar OUT.json.

example:
  prunekit quantize --model model.onnx --data bundled --out model.int8.onnx
  prunekit quantize --model model.onnx --data fashion-mnist --data-dir ~/fmnist --method percentile --json
"""

from __future__ import annotations

import argparse
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
    p.add_argument("--no-eval", dest="evaluate", action="store_false",
                   help="skip the fp32 vs int8 accuracy comparison on the test split")
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
    res = quantize(src, out, cfg.data, q, batch_size=args.batch_size, evaluate=args.evaluate, seed=cfg.seed)
    if args.json:
        print_json({**res, "model": str(src), "data": cfg.data.name})
        return 0
    print(f"int8 ({q.method} calibration on {res['calib_samples']} {cfg.data.name} training images, "
          f"{'per-channel' if q.per_channel else 'per-tensor'} weights) -> {out}")
    print(f"size {res['fp32_bytes'] / 1e6:.2f} MB -> {res['bytes'] / 1e6:.2f} MB ({100 * res['size_ratio']:.1f}% of fp32)")
    if args.evaluate:
        print(f"top-1 fp32 {res['fp32']['top1']:.2f}%  int8 {res['int8']['top1']:.2f}%  "
              f"(drop {res['top1_drop']:+.2f} points; same top-1 on {res['agreement']:.1f}% of "
              f"{res['int8']['n']} {cfg.data.name} test images)")
    if res.get("note"):
        print(f"note: {res['note']}")
    return 0
