"""Top-k class labels with probabilities for image files (PNG, JPEG, ...), with any model form.

--model takes a model directory (PyTorch), an fp32 or int8 .onnx file (ONNX Runtime), a TorchScript .ts or
an ExportedProgram .pt2. Images are converted to the model's channels and size (shorter-side resize + center
crop when the model was trained that way) and normalised with the model's mean/std, all read from the model.

example:
  prunekit predict shirt.png boot.jpg --model runs/shrunk
  prunekit predict shirt.png --model model.int8.onnx --topk 3 --json
"""

from __future__ import annotations

import argparse

from .common import add_json_arg, positive_int, print_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--model", required=True, help="model directory, .onnx (fp32/int8), .ts or .pt2")
    p.add_argument("--topk", type=positive_int("--topk"), default=5, help="labels per image (default 5)")
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=64)
    add_json_arg(p)


def run(args: argparse.Namespace) -> int:
    from ..steps import predict

    rt, preds = predict(args.model, args.images, topk=args.topk, batch_size=args.batch_size)
    if args.json:
        print_json({"model": args.model, "runtime": rt.kind, "precision": rt.precision,
                    "predictions": [p.to_dict() for p in preds]})
        return 0
    for p in preds:
        print(f"{p.image}:")
        for rank, t in enumerate(p.top, 1):
            print(f"  {rank}. {t.name:<24} {100 * t.prob:6.2f}%")
    return 0
