"""Dry run before any training: every channel group, which ones the layer selection would prune, and
every group left alone with the reason (model input/output, grouped conv, untraceable op, ...).

example:
  prunekit plan --model runs/mnv1/model
  prunekit plan --model torchvision:resnet50 --layers all --json
"""

from __future__ import annotations

import argparse

from .common import add_json_arg, positive_int, print_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory, torchvision:NAME or timm:NAME")
    p.add_argument("--layers", default="pointwise", help="pointwise (default), all, or a regex over layer names")
    p.add_argument("--exclude", help="regex of layers never to prune")
    p.add_argument("--leaf", action="append", default=[], metavar="MODULE", help="do not trace into MODULE")
    p.add_argument("--image-size", type=positive_int("--image-size"), help="input size (default: the model's)")
    add_json_arg(p)


def run(args: argparse.Namespace) -> int:
    from ..steps import plan as make_plan

    plan = make_plan(args.model, args.layers, args.exclude, args.leaf, args.image_size)
    if args.json:
        print_json(plan)
        return 0
    rows = plan["groups"]
    print(f"{args.model}: {len(rows)} channel groups, {plan['selected']} selected by --layers {args.layers}")
    print(f"{'status':<7} {'group':<34} {'ch':>5}  members / reason")
    for r in rows:
        detail = r["reason"] or ", ".join(r["members"][:4]) + (" ..." if len(r["members"]) > 4 else "")
        print(f"{r['status']:<7} {r['group']:<34} {r['channels']:>5}  {detail}")
    return 0
