"""Per-layer summary of a model: type, in/out channels, kernel, groups, parameters, MACs, and totals.

For a masked (pruned, not yet shrunk) model it also lists the kept/total channels of every pruned group.

example:
  prunekit summary --model runs/mnv1/model
  prunekit summary --model torchvision:resnet18 --json
"""

from __future__ import annotations

import argparse

from .common import add_json_arg, image_side, print_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory, torchvision:NAME or timm:NAME")
    p.add_argument("--image-size", type=image_side("--image-size"), help="input size for MACs (default: the "
                   "model's)")
    add_json_arg(p)


def run(args: argparse.Namespace) -> int:
    from ..report.summary import format_table, human
    from ..steps import summary

    s = summary(args.model, args.image_size)
    prof, masked = s["profile"], s["masked_groups"]
    if args.json:
        print_json({**prof.to_dict(), "model": args.model, "arch": s["arch"], "masked_groups": masked})
        return 0
    print(f"{s['arch']}  input {s['input_shape']}  params {human(prof.params)}  MACs {human(prof.macs)}")
    print(format_table(prof))
    if masked:
        kept, total = sum(m["kept"] for m in masked), sum(m["total"] for m in masked)
        print(f"\nmasked groups ({100 * (1 - kept / total):.1f}% of their channels pruned; run `prunekit surgery` to "
              "remove them):")
        for m in masked:
            print(f"  {m['group']:<32} {m['kept']:>5} / {m['total']}")
    return 0
