"""Top-1 / top-5 accuracy of a saved model on a dataset split (masked models are evaluated with their masks).

example:
  prunekit eval --model runs/mnv1/model --data bundled
  prunekit eval --model runs/imagenet/model --data imagefolder --data-dir /data/imagenet/val --json
"""

from __future__ import annotations

import argparse

from .common import (
    add_config_args,
    add_data_args,
    add_device_arg,
    add_json_arg,
    positive_int,
    print_json,
    run_config,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory, or an exported .onnx/.ts/.pt2 file")
    add_data_args(p)
    add_config_args(p)
    p.add_argument("--split", choices=["test", "train"], default="test", help="split (default test)")
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=256)
    add_json_arg(p)
    add_device_arg(p)


def run(args: argparse.Namespace) -> int:
    from ..steps import evaluate
    from ..train import pick_device

    cfg = run_config(args)
    res = evaluate(args.model, cfg.data, split=args.split, batch_size=args.batch_size, device=pick_device(cfg.device),
                   seed=cfg.seed)
    if args.json:
        print_json({**res, "model": args.model, "data": cfg.data.name, "split": args.split})
    else:
        print(f"top-1 {res['top1']:.2f}%  top-5 {res['top5']:.2f}%  n={res['n']}  ({cfg.data.name} {args.split})")
    return 0
