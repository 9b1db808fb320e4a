"""Dry run before any training: every channel group, which ones the layer selection would prune, and
every group left alone with the reason (model input/output, grouped conv, untraceable op, ...).

With --budget it also chooses how many channels every selected group keeps so that the model meets the
budget (sensitivity per group with adaptive BatchNorm, the budget's cost model: MACs, parameters or a latency
table measured here on --budget-runtime, then a greedy allocation and --search-candidates more scored by
adaptive-BN accuracy; the best must then beat uniform's allocation on fresh held-out images by 2 standard
errors, else uniform's is kept) and prints the allocation against uniform pruning at the same budget. Nothing is
trained; `prunekit prune --budget ...` then prunes to it.

example:
  prunekit plan --model runs/mnv1/model
  prunekit plan --model torchvision:resnet50 --layers all --json
  prunekit plan --model runs/mnv1/model --budget macs=0.25x --data bundled
  prunekit plan --model runs/mnv1/model --budget latency_ms=0.5x --budget-batch 32 --out runs/plan
"""

from __future__ import annotations

import argparse

from .common import (
    add_budget_args,
    add_config_args,
    add_data_args,
    add_device_arg,
    add_json_arg,
    config_flag,
    image_side,
    print_json,
    run_config,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory, torchvision:NAME or timm:NAME")
    config_flag(p, "--layers", "prune.layers", help="pointwise (default), all, or a regex over layer names")
    config_flag(p, "--exclude", "prune.exclude", help="regex of layers never to prune")
    p.add_argument("--leaf", action="append", default=[], metavar="MODULE", help="do not trace into MODULE")
    p.add_argument("--image-size", type=image_side("--image-size"), help="input size (default: the model's)")
    b = p.add_argument_group("budget (optional)")
    add_budget_args(b)
    config_flag(b, "--criterion", "prune.criterion", help="channel importance (default l1)")
    config_flag(b, "--round-to", "prune.round_to", help="keep multiples of N channels")
    add_data_args(b)
    add_config_args(b)
    b.add_argument("--out", help="also write sensitivity.json/png, budget_plan.json and allocation.png here")
    add_device_arg(p)
    add_json_arg(p)


def run(args: argparse.Namespace) -> int:
    from ..steps import plan as make_plan

    cfg = run_config(args)
    plan = make_plan(args.model, cfg.prune.layers, cfg.prune.exclude, args.leaf, args.image_size)
    if cfg.prune.budget:
        return _budget(args, cfg, plan)
    if args.json:
        print_json(plan)
        return 0
    rows = plan["groups"]
    print(f"{args.model}: {len(rows)} channel groups, {plan['selected']} selected by --layers {cfg.prune.layers}")
    print(f"{'status':<7} {'group':<34} {'ch':>5}  members / reason")
    for r in rows:
        detail = r["reason"] or ", ".join(r["members"][:4]) + (" ..." if len(r["members"]) > 4 else "")
        print(f"{r['status']:<7} {r['group']:<34} {r['channels']:>5}  {detail}")
    return 0


def _budget(args: argparse.Namespace, cfg, plan: dict) -> int:
    import sys

    from ..steps import plan_budget
    from ..train import pick_device
    from .common import fresh_output

    out = fresh_output(args.out, overwrite=True, marker="budget_plan.json") if args.out else None
    log = (lambda m: print(m, file=sys.stderr)) if args.json else print
    res = plan_budget(cfg, args.model, out, device=pick_device(cfg.device), log=log)
    if args.json:
        print_json({"model": args.model, "layers": plan, **res.to_dict(), "sensitivity": res.sensitivity.to_dict()})
        return 0
    a, u = res.allocation, res.uniform
    unit = {"macs": "MACs", "params": "params", "latency_ms": f"ms ({res.runtime}, batch {cfg.prune.budget_batch})"}[
        res.budget.split("=")[0]]
    print(f"\nbudget {res.budget}: {res.target:.4g} {unit} (dense {res.dense_cost:.4g}); predicted {a.cost:.4g}")
    r, f = res.ranked or u, res.filled
    fill_col = f" {'uniform_fill':>12}" if f is not None else ""
    print(f"{'group':<28} {'total':>6} {'uniform':>8}{fill_col} {'ranked':>7} {'searched':>9}")
    for i, (n, t, ku, kr, ka) in enumerate(zip(a.names, a.sizes, u.keep, r.keep, a.keep, strict=True)):
        kf = f" {f.keep[i]:>12}" if f is not None else ""
        print(f"{n:<28} {t:>6} {ku:>8}{kf} {kr:>7} {ka:>9}")
    fill = (f", uniform_fill {f.score['top1']:.2f}% (uniform spending the whole budget: {f.cost:.4g} vs "
            f"{u.cost:.4g})") if f is not None else ""
    print(f"adaptive-BN top-1 on {res.sensitivity.meta.get('eval_images', '?')} held-out training images: searched "
          f"{a.score['top1']:.2f}% ({a.method}), uniform {u.score['top1']:.2f}%{fill}, ranked {r.score['top1']:.2f}% "
          "(no search: channels ranked across layers per unit of budget saved)")
    if "refined_top1" in a.score:
        ur = f", uniform {u.score['refined_top1']:.2f}%" if "refined_top1" in u.score else ""
        print(f"after {cfg.prune.search_finetune_steps} fine-tuning steps each (prune.search_finetune_steps): "
              f"searched {a.score['refined_top1']:.2f}%{ur}")
    c = a.extra.get("confirm")
    if c:
        verdict = ("kept" if c["kept"] == "searched" else
                   "not more than 2 SE: the plan keeps uniform's allocation (searched column = uniform)")
        print(f"confirmed on {c['images']} fresh held-out images (prune.search_confirm_images): search's pick "
              f"{c['searched_top1']:.2f}% vs uniform {c['uniform_top1']:.2f}%, {c['diff']:+.2f} +- {c['se']:.2f} "
              f"paired: {verdict}")
    if any(a.extra.get("floor") or []):
        print(f"no group below {cfg.prune.search_floor:g} x uniform's channels (prune.search_floor): at least "
              f"{', '.join(map(str, a.extra['floor']))}")
    print(f"next: prunekit prune --model {args.model} --budget {res.budget} --out <dir>  (prunes to the ranked "
          "allocation; --budget-allocation searched, uniform" + (", uniform_fill" if f is not None else "") +
          " for the other columns)")
    return 0
