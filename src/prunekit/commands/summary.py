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
    p.add_argument("--model", required=True, help="model directory or torchvision:NAME")
    p.add_argument("--image-size", type=image_side("--image-size"), help="input size for MACs (default: the "
                   "model's)")
    add_json_arg(p)


def run(args: argparse.Namespace) -> int:
    from ..api import resolve
    from ..memory import check_one_image
    from ..pruning.pruner import strip_copy
    from ..report.summary import format_table, human, profile

    loaded = resolve(args.model)
    shape = loaded.input_shape if not args.image_size else (loaded.spec.input.channels, args.image_size,
                                                            args.image_size)
    model = strip_copy(loaded.model) if loaded.pruner else loaded.model
    check_one_image(model, shape, "summary")
    prof = profile(model, shape)
    masked = None
    if loaded.pruner:
        masked = [{"group": g.name, "kept": int(a.sum()), "total": g.size}
                  for g, a in zip(loaded.pruner.groups, loaded.pruner.alive().values(), strict=True)]
    if args.json:
        print_json({**prof.to_dict(), "model": args.model, "arch": loaded.spec.arch, "masked_groups": masked})
        return 0
    print(f"{loaded.spec.arch}  input {list(shape)}  params {human(prof.params)}  MACs {human(prof.macs)}")
    print(format_table(prof))
    if masked:
        kept, total = sum(m["kept"] for m in masked), sum(m["total"] for m in masked)
        print(f"\nmasked groups ({100 * (1 - kept / total):.1f}% of their channels pruned; run `prunekit surgery` to "
              "remove them):")
        for m in masked:
            print(f"  {m['group']:<32} {m['kept']:>5} / {m['total']}")
    return 0
