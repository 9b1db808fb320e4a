"""Import pretrained MobileNet V1 weights (Keras or timm) into a prunekit model directory.

Keras: keras.applications.MobileNet files of any width (0.25-1.0 and beyond) with 1000 or 1001 classes: classic
keras-applications / Keras 2 .h5 (e.g. mobilenet_1_0_224_tf.h5, save_weights or model.save), Keras 3 .weights.h5
and .keras archives. The model reproduces Keras exactly: BatchNorm eps 1e-3, TF 'same' padding on stride-2
layers, inputs scaled to [-1, 1].
timm: mobilenetv1_100 / mobilenetv1_125 (and other widths with int(c * width) channels) as .safetensors or a
state dict (.pth/.bin, loaded with weights_only=True); normalisation from the model's pretrained_cfg. timm's
mobilenetv1_100h (extra 1x1 head conv) cannot be expressed and is refused.

The width is read from the weights (--width only checks it). When Keras/timm is installed the imported model
is verified against it on random images (max abs logit difference <= 1e-4); the import fails otherwise. The
directory records ImageNet class names (1001 classes: "background" first), input 224x224 after resize-256 +
center crop, and the source file's name and SHA-256.

example:
  prunekit import --from keras mobilenet_1_0_224_tf.h5 --arch mobilenet_v1 --out models/mnv1_keras
  prunekit import --from timm model.safetensors --arch mobilenet_v1 --width 1.0 --out models/mnv1_timm
  prunekit eval --model models/mnv1_keras --data imagefolder --data-dir /data/imagenet --json
  prunekit surgery --model models/mnv1_keras --sparsity 0.5 --out models/mnv1_half
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_json_arg, fresh_output, positive_float, print_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="weights file: Keras .h5/.weights.h5/.keras, timm .safetensors/.pth/.bin")
    p.add_argument("--from", dest="source", required=True, choices=["keras", "timm"], help="framework that wrote FILE")
    p.add_argument("--arch", default="mobilenet_v1", help="architecture (only mobilenet_v1)")
    p.add_argument("--width", type=positive_float("--width"),
                   help="width multiplier; default: read from the weights (if given, it must match them)")
    p.add_argument("--out", required=True, help="output model directory")
    p.add_argument("--timm-model", metavar="NAME",
                   help="timm model name (default: config.json next to FILE, else mobilenetv1_<width*100>)")
    p.add_argument("--class-names", metavar="TXT",
                   help="class names, one per line (default: ImageNet-1k for 1000/1001 classes)")
    p.add_argument("--no-verify", dest="verify", action="store_false", default=True,
                   help="skip the comparison against Keras/timm")
    p.add_argument("--overwrite", action="store_true", help="replace a model already in --out")
    add_json_arg(p)


def run(args: argparse.Namespace) -> int:
    from ..errors import PrunekitError
    from ..models.importers import import_keras, import_timm
    from ..saved import save

    out = fresh_output(args.out, overwrite=args.overwrite, marker="model.json")
    names = None
    if args.class_names:
        path = Path(args.class_names)
        if not path.is_file():
            raise PrunekitError(f"--class-names file not found: {path}")
        try:
            names = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        except UnicodeDecodeError:
            raise PrunekitError(f"--class-names {path} is not a text file") from None
    if args.source == "keras":
        if args.timm_model:
            raise PrunekitError("--timm-model only applies to --from timm")
        model, spec = import_keras(args.file, args.width, args.arch, class_names=names, verify=args.verify)
    else:
        model, spec = import_timm(args.file, args.width, args.arch, model_name=args.timm_model, class_names=names,
                                  verify=args.verify)
    save(model, out, spec)
    src = spec.extra["source"]
    ver = src.get("verification", {})
    info = {"out": str(out), "source": src, "kwargs": spec.kwargs, "input": vars(spec.input),
            "params": sum(p.numel() for p in model.parameters())}
    if args.json:
        print_json(info)
    else:
        check = (f"matches {ver['against']} (max abs logit diff {ver['max_abs_diff']:.1e})" if "max_abs_diff" in ver
                 else f"not verified: {ver.get('skipped')}")
        print(f"imported {args.source} MobileNet V1 width {src['width']:g}, {src['num_classes']} classes, "
              f"{info['params']:,} params from {src['file']} ({src['format']}); {check}")
        print(f"input {spec.input.size[0]}x{spec.input.size[1]} (resize {spec.input.resize}), mean {spec.input.mean} "
              f"std {spec.input.std} -> {out}")
    return 0
