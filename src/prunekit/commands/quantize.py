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

from .common import add_data_args, add_json_arg, positive_int, print_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..export import METHODS

    p.add_argument("--model", required=True, help="fp32 ONNX model exported by `prunekit export`")
    add_data_args(p)
    p.add_argument("--calib-samples", type=positive_int("--calib-samples"), default=512,
                   help="calibration images from the training split (default 512)")
    p.add_argument("--method", choices=METHODS, default="minmax", help="calibration method (default minmax)")
    p.add_argument("--per-channel", action=argparse.BooleanOptionalAction, default=True,
                   help="per-channel weight scales (default: on)")
    p.add_argument("--out", help="int8 model (default: MODEL with .int8.onnx)")
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=64,
                   help="calibration/evaluation batch size (default 64)")
    p.add_argument("--no-eval", dest="evaluate", action="store_false",
                   help="skip the fp32 vs int8 accuracy comparison on the test split")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    add_json_arg(p)


def run(args: argparse.Namespace) -> int:
    from types import SimpleNamespace

    from ..errors import PrunekitError
    from ..export import calibration_batches, default_int8_path, load_onnx_proto, onnx_meta, quantize_onnx
    from ..export.metadata import check_output
    from ..inference.runtime import evaluate_runtime, load_onnx
    from .common import model_data

    src = Path(args.model)
    if src.is_dir():
        raise PrunekitError(f"{src} is a directory; quantize takes an fp32 ONNX file: run `prunekit export --model "
                            f"{src} --out model.onnx` first")
    if src.suffix.lower() != ".onnx" and src.exists():
        raise PrunekitError(f"{src}: quantize takes an fp32 ONNX file (.onnx), exported by `prunekit export`")
    proto = load_onnx_proto(src)
    meta = onnx_meta(src, {p.key: p.value for p in proto.metadata_props})
    del proto
    out = Path(args.out) if args.out else default_int8_path(src)
    if out.resolve() == src.resolve():
        raise PrunekitError("--out must differ from --model")
    out = check_output(out, args.overwrite)
    bundle = model_data(SimpleNamespace(spec=meta.spec()), args.data, args.data_dir)
    n_train = len(bundle.train)
    calib = calibration_batches(bundle, args.calib_samples, args.batch_size)
    res = quantize_onnx(src, out, calib, method=args.method, per_channel=args.per_channel,
                        calib_source=f"{args.data} train")
    if args.calib_samples > n_train:
        res["note"] = f"--calib-samples {args.calib_samples} > {n_train} training images: used all of them"
    if args.evaluate:
        for name, path in (("fp32", src), ("int8", out)):
            ev = evaluate_runtime(load_onnx(path), bundle, "test", max(args.batch_size, 256))
            res[name] = {"top1": ev["top1"], "top5": ev["top5"], "n": ev["n"]}
            res.setdefault("_preds", {})[name] = ev["predictions"]
        preds = res.pop("_preds")
        res["agreement"] = 100.0 * float((preds["fp32"] == preds["int8"]).mean())
        res["top1_drop"] = res["fp32"]["top1"] - res["int8"]["top1"]
    if args.json:
        print_json({**res, "model": str(src), "data": args.data})
        return 0
    print(f"int8 ({args.method} calibration on {res['calib_samples']} {args.data} training images, "
          f"{'per-channel' if args.per_channel else 'per-tensor'} weights) -> {out}")
    print(f"size {res['fp32_bytes'] / 1e6:.2f} MB -> {res['bytes'] / 1e6:.2f} MB ({100 * res['size_ratio']:.1f}% of fp32)")
    if args.evaluate:
        print(f"top-1 fp32 {res['fp32']['top1']:.2f}%  int8 {res['int8']['top1']:.2f}%  "
              f"(drop {res['top1_drop']:+.2f} points; same top-1 on {res['agreement']:.1f}% of "
              f"{res['int8']['n']} {args.data} test images)")
    if res.get("note"):
        print(f"note: {res['note']}")
    return 0
