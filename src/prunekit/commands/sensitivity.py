"""Sensitivity of every prunable channel group: top-1 and loss on a held-out slice of the training data when
that group alone is pruned to 10%, 20%, ... 90% of its channels (the rest dense), with BatchNorm statistics
re-estimated on a few training batches first (adaptive BN). Writes OUT/sensitivity.json and
OUT/sensitivity.png; results are cached by the model's weights and the settings, so a second run is instant.
The budget search (`prunekit plan/prune --budget`) reads the same measurements.

example:
  prunekit sensitivity --model runs/mnv1/model --data bundled --out runs/sens
  prunekit sensitivity --model runs/mnv1/model --layers all --criterion l2 --out runs/sens --json
"""

from __future__ import annotations

import argparse
import sys

from .common import (
    add_config_args,
    add_data_args,
    add_device_arg,
    add_json_arg,
    config_flag,
    fresh_output,
    print_json,
    run_config,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="dense model directory")
    add_data_args(p)
    add_config_args(p)
    config_flag(p, "--layers", "prune.layers", help="pointwise (default), all, or a regex over layer names")
    config_flag(p, "--exclude", "prune.exclude")
    config_flag(p, "--criterion", "prune.criterion", help="which channels a group keeps (default l1)")
    config_flag(p, "--round-to", "prune.round_to")
    config_flag(p, "--images", "prune.sensitivity_images", help="held-out training images scored (default 1000)")
    config_flag(p, "--calib-images", "prune.calib_images", help="images that re-estimate BatchNorm (default 512)")
    p.add_argument("--out", required=True, help="output directory")
    add_device_arg(p)
    add_json_arg(p)


def run(args: argparse.Namespace) -> int:
    from ..steps import sensitivity
    from ..train import pick_device

    cfg = run_config(args)
    out = fresh_output(args.out, overwrite=True, marker="sensitivity.json")
    log = (lambda m: print(m, file=sys.stderr)) if args.json else print
    sens = sensitivity(cfg, args.model, out, device=pick_device(cfg.device), log=log)
    if args.json:
        print_json({"model": args.model, **sens.to_dict()})
        return 0
    head = "".join(f"{int(100 * s):>6}%" for s in sens.sparsities)
    print(f"\ntop-1 with one group pruned (dense {sens.dense['top1']:.2f}%), adaptive BN, "
          f"{sens.meta.get('eval_images', '?')} held-out training images")
    print(f"{'group':<28}{head}")
    for name, rows in sens.groups.items():
        print(f"{name:<28}" + "".join(f"{r['top1']:>7.1f}" for r in rows))
    print(f"-> {out / 'sensitivity.json'}, {out / 'sensitivity.png'}")
    return 0
