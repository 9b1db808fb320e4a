"""Import pretrained weights into a prunekit model directory: MobileNet V1 from Keras or timm, or any timm
architecture as ``timm:NAME``.

Keras: keras.applications.MobileNet files of any width (0.25-1.0 and beyond) with 1000 or 1001 classes: classic
keras-applications / Keras 2 .h5 (e.g. mobilenet_1_0_224_tf.h5, save_weights or model.save), Keras 3 .weights.h5
and .keras archives. The model reproduces Keras exactly: BatchNorm eps 1e-3, TF 'same' padding on stride-2
layers, inputs scaled to [-1, 1].
timm, --arch mobilenet_v1: mobilenetv1_100 / mobilenetv1_125 (and other widths with int(c * width) channels) as
.safetensors or a state dict (.pth/.bin, loaded with weights_only=True); normalisation from the model's
pretrained_cfg. timm's mobilenetv1_100h (extra 1x1 head conv) cannot be expressed and is refused.
timm, --arch timm:NAME: any timm architecture (timm installed); the number of classes is read from the classifier
weights, input size / mean / std / crop from config.json next to FILE or timm's pretrained_cfg, and the model is
verified against timm's own loading of FILE. The directory records timm:NAME and rebuilds it with timm on load.

The width is read from the weights (--width only checks it). When Keras/timm is installed the imported model
is verified against it on random images (max abs logit difference <= 1e-4); the import fails otherwise. The
directory records the class names (ImageNet for 1000 classes; 1001: "background" first), the input, and the
source file's name and SHA-256.

example:
  prunekit import --from keras mobilenet_1_0_224_tf.h5 --arch mobilenet_v1 --out models/mnv1_keras
  prunekit import --from timm model.safetensors --arch mobilenet_v1 --width 1.0 --out models/mnv1_timm
  prunekit import --from timm model.safetensors --arch timm:efficientnet_b0 --out models/effb0
  prunekit eval --model models/mnv1_keras --data imagefolder --data-dir /data/imagenet --json
  prunekit surgery --model models/effb0 --sparsity 0.4 --layers all --out models/effb0_pruned
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_json_arg, fresh_output, positive_float, print_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="weights file: Keras .h5/.weights.h5/.keras, timm .safetensors/.pth/.bin")
    p.add_argument("--from", dest="source", required=True, choices=["keras", "timm"], help="framework that wrote FILE")
    p.add_argument("--arch", default="mobilenet_v1", help="mobilenet_v1, or timm:NAME (with --from timm)")
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
    from ..models import TIMM_PREFIX
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
    any_timm = args.arch.startswith(TIMM_PREFIX)
    if any_timm and args.source != "timm":
        raise PrunekitError(f"--arch {args.arch} needs --from timm")
    if any_timm and (args.width is not None or args.timm_model):
        raise PrunekitError("--width and --timm-model only apply to --arch mobilenet_v1 (timm:NAME names the model)")
    if args.source == "keras":
        if args.timm_model:
            raise PrunekitError("--timm-model only applies to --from timm")
        model, spec = import_keras(args.file, args.width, args.arch, class_names=names, verify=args.verify)
    elif any_timm:
        from ..models.timm_import import import_timm_model

        model, spec = import_timm_model(args.file, args.arch, class_names=names, verify=args.verify)
    else:
        model, spec = import_timm(args.file, args.width, args.arch, model_name=args.timm_model, class_names=names,
                                  verify=args.verify)
    save(model, out, spec)
    src = spec.extra["source"]
    ver = src.get("verification", {})
    info = {"out": str(out), "arch": spec.arch, "source": src, "kwargs": spec.kwargs, "input": vars(spec.input),
            "params": sum(p.numel() for p in model.parameters())}
    if args.json:
        print_json(info)
    else:
        check = (f"matches {ver['against']} (max abs logit diff {ver['max_abs_diff']:.1e})" if "max_abs_diff" in ver
                 else f"not verified: {ver.get('skipped')}")
        what = spec.arch if any_timm else f"MobileNet V1 width {src['width']:g}"
        print(f"imported {args.source} {what}, {src['num_classes']} classes, "
              f"{info['params']:,} params from {src['file']} ({src['format']}); {check}")
        print(f"input {spec.input.size[0]}x{spec.input.size[1]} (resize {spec.input.resize}), mean {spec.input.mean} "
              f"std {spec.input.std} -> {out}")
    return 0
