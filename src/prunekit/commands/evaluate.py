"""Top-1 / top-5 accuracy of a saved model on a dataset split (masked models are evaluated with their masks).

example:
  prunekit eval --model runs/mnv1/model --data bundled
  prunekit eval --model runs/imagenet/model --data imagefolder --data-dir /data/imagenet/val --json
"""

from __future__ import annotations

import argparse

from .common import add_data_args, add_device_arg, add_json_arg, model_data, positive_int, print_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory")
    add_data_args(p)
    p.add_argument("--split", choices=["test", "train"], default="test", help="split (default test)")
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=256)
    add_json_arg(p)
    add_device_arg(p)


def run(args: argparse.Namespace) -> int:
    from ..api import resolve
    from ..train import evaluate, pick_device

    dev = pick_device(args.device)
    loaded = resolve(args.model, dev)
    data = model_data(loaded, args.data, args.data_dir)
    res = evaluate(loaded.model, data, args.split, args.batch_size, dev)
    if args.json:
        print_json({**res, "model": args.model, "data": args.data, "split": args.split})
    else:
        print(f"top-1 {res['top1']:.2f}%  top-5 {res['top5']:.2f}%  n={res['n']}  ({args.data} {args.split})")
    return 0
