"""Dry run before any training: every channel group, which ones the layer selection would prune, and
every group left alone with the reason (model input/output, grouped conv, untraceable op, ...).

example:
  prunekit plan --model runs/mnv1/model
  prunekit plan --model torchvision:resnet50 --layers all --json
"""

from __future__ import annotations

import argparse

from .common import add_json_arg, image_side, print_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory or torchvision:NAME")
    p.add_argument("--layers", default="pointwise", help="pointwise (default), all, or a regex over layer names")
    p.add_argument("--exclude", help="regex of layers never to prune")
    p.add_argument("--leaf", action="append", default=[], metavar="MODULE", help="do not trace into MODULE")
    p.add_argument("--image-size", type=image_side("--image-size"), help="input size (default: the model's)")
    add_json_arg(p)


def run(args: argparse.Namespace) -> int:
    from ..api import resolve
    from ..graph import DependencyGraph
    from ..memory import check_one_image
    from ..pruning.pruner import strip_copy

    loaded = resolve(args.model)
    shape = loaded.input_shape if not args.image_size else (loaded.spec.input.channels, args.image_size,
                                                            args.image_size)
    model = strip_copy(loaded.model) if loaded.pruner else loaded.model
    check_one_image(model, shape, "plan")
    graph = DependencyGraph(model, shape, args.leaf)
    graph.select(args.layers, args.exclude)  # raises a clear error when nothing matches
    plan = graph.plan(args.layers, args.exclude)
    if args.json:
        print_json({"model": args.model, **plan})
        return 0
    rows = plan["groups"]
    print(f"{args.model}: {len(rows)} channel groups, {plan['selected']} selected by --layers {args.layers}")
    print(f"{'status':<7} {'group':<34} {'ch':>5}  members / reason")
    for r in rows:
        detail = r["reason"] or ", ".join(r["members"][:4]) + (" ..." if len(r["members"]) > 4 else "")
        print(f"{r['status']:<7} {r['group']:<34} {r['channels']:>5}  {detail}")
    return 0
