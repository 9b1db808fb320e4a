"""How much does the per-layer allocation matter, and does the search's score see it?

``budget_fmnist.py`` compares the searched allocation with uniform pruning at each budget and finds them within
noise on the quick CPU setup. Two explanations lead to different next steps: (a) allocations that meet the
budget really do differ after fine-tuning, but the search's adaptive-BN score cannot tell them apart (then a
better score would help), or (b) after fine-tuning they all end up within seed noise of one another (then no
search can beat uniform here by much). This script tells them apart.

It runs the library's budget plan once (the same dense model, settings and candidates as ``budget_fmnist.py``
with the same options), picks ``--k`` of the scored candidates spread over the adaptive-BN ranking (the best,
the worst, uniform, greedy and evenly spaced ranks in between), and trains every one of them exactly like
``budget_fmnist.py``'s searched arm (gradual pruning to the allocation, surgery, fine-tuning) for each seed.
Reported per allocation: adaptive-BN top-1 at planning time, MACs, parameters, final test top-1 per seed and
their mean; then the spread of the means, the seed noise (pooled standard deviation over seeds) and the rank
correlation between the adaptive-BN score and the final top-1.

    python benchmarks/allocation_spread.py --quick --split 1,1,3 --finetune-lr 0.1   # ~20 min on 2 cores
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import budget_fmnist as B  # noqa: E402


def pick(records: list[dict], k: int) -> list[int]:
    """Indices of ``k`` records: uniform, greedy, the best and worst by adaptive-BN top-1 (then loss), and
    evenly spaced ranks in between."""
    order = sorted(range(len(records)), key=lambda i: (-records[i]["top1"], records[i]["loss"]))
    chosen = [i for i, r in enumerate(records) if r["method"] in ("uniform", "greedy")]
    for i in (order[0], order[-1]):
        if i not in chosen:
            chosen.append(i)
    for q in np.linspace(0, len(order) - 1, max(k, 2)):
        if len(chosen) >= k:
            break
        i = order[int(round(q))]
        if i not in chosen:
            chosen.append(i)
    return sorted(chosen[:k], key=order.index)


def ranks(v: list[float]) -> np.ndarray:
    """Ranks from 0, ties sharing their average rank."""
    v = np.asarray(v, dtype=np.float64)
    r = np.empty(len(v))
    r[np.argsort(v, kind="stable")] = np.arange(len(v))
    return np.array([r[v == x].mean() for x in v])


def spearman(x: list[float], y: list[float]) -> float:
    """Rank correlation (nan with fewer than 3 values or when either side is constant)."""
    rx, ry = ranks(x), ranks(y)
    if len(x) < 3 or np.ptp(rx) == 0 or np.ptp(ry) == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="a tiny end-to-end check of this script")
    ap.add_argument("--data-dir")
    ap.add_argument("--budget", default="macs=0.25x")
    ap.add_argument("--k", type=int, default=8, help="allocations to train (default %(default)s)")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--split", help="dense,prune,fine-tune epochs (as budget_fmnist.py)")
    ap.add_argument("--finetune-lr", type=float, default=None)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=None)
    # budget_fmnist.py's options that this script keeps at their defaults (its searched arm, no distillation)
    ap.set_defaults(distill=0.0, tag="", global_floor=None, global_norm=None)
    args = ap.parse_args(argv)
    mode, c = B.setup(args, ap)
    C.setup_threads(args.threads or None)
    from prunekit import steps
    from prunekit.pruning.search import Allocation
    from prunekit.saved import load
    from prunekit.train import DistContext, pick_device

    work, dense_dir = B._work_dirs(args, mode)
    work = work.parent / (work.name + "_spread")
    device = pick_device("auto")
    ctx = DistContext(device=device)
    env = C.environment(device)
    t_all = time.perf_counter()
    bundle = C.load_fmnist(args.data_dir, c["train_subset"])
    seeds = [int(s) for s in args.seeds.split(",")]
    with C.LoadSampler() as ls:
        if not (dense_dir / "model" / "model.json").is_file():
            C.log(f"dense: MobileNet V1 {c['width']}, {c['dense_epochs']} epochs")
            steps.train(B.run_config(c, 0), dense_dir, data=bundle, ctx=ctx, log=C.log)
        dense_top1 = load(dense_dir / "model").spec.extra["metrics"]["test"]["top1"]
        plan = steps.plan_budget(B.run_config(c, 0, args.budget), dense_dir / "model",
                                 work / args.budget.replace("=", "_") / "plan", data=bundle, device=device, log=C.log)
        names, sizes = plan.allocation.names, plan.allocation.sizes
        rows = []
        for i in pick(plan.candidates, args.k):
            rec = plan.candidates[i]
            row = {"candidate": i, "method": rec["method"], "abn_top1": rec["top1"], "abn_loss": rec["loss"],
                   "kept": rec["kept"], "seeds": []}
            rows.append(row)
            arm = copy.copy(plan)
            arm.allocation = Allocation(names, sizes, list(rec["kept"]), rec["cost"], rec["method"])
            for seed in seeds:
                t0 = time.perf_counter()
                run = work / f"{args.budget.replace('=', '_')}_c{i}_s{seed}"
                cfg = B.run_config(c, seed, args.budget)
                pr = steps.prune(cfg, dense_dir / "model", run / "prune", data=bundle, ctx=ctx, log=C.log, plan=arm)
                r = B.finish(run, pr.model_dir, cfg, bundle, t0, dense_dir)
                row["seeds"].append({"seed": seed, "top1": r["top1"], "n": r["n"]})
                row["macs"], row["params"] = r["macs"], r["params"]
                C.log(f"candidate {i} ({rec['method']}, adaptive-BN {rec['top1']:.1f}%) seed {seed}: "
                      f"top-1 {r['top1']:.2f}%")
    for r in rows:
        r["mean"] = float(np.mean([s["top1"] for s in r["seeds"]]))
    means = [r["mean"] for r in rows]
    pooled_sd = float(np.sqrt(np.mean([np.var([s["top1"] for s in r["seeds"]], ddof=1) for r in rows]))) \
        if len(seeds) > 1 else float("nan")
    summary = {"spread_of_means": max(means) - min(means), "sd_of_means": float(np.std(means, ddof=1)),
               "seed_sd": pooled_sd, "se_of_a_mean": pooled_sd / np.sqrt(len(seeds)),
               "spearman_abn_vs_final": spearman([r["abn_top1"] for r in rows], means)}
    doc = {"command": C.command_line(), "environment": env, "provenance": env.get("provenance"), "config": c,
           "budget": args.budget, "seeds": seeds, "dense_top1": dense_top1, "target": plan.target,
           "dense_cost": plan.dense_cost, "rows": rows, "summary": summary, "load": ls.summary(),
           "seconds_total": round(time.perf_counter() - t_all, 1)}
    lines = [f"# Does the allocation matter? {args.budget}, {mode} setup", "", C.provenance_line(doc["provenance"]),
             "", f"MobileNet V1 {c['width']}, {c['train_subset'] or 'all'} training images, epochs dense + prune + "
             f"fine-tune = {c['dense_epochs']:g} + {c['prune_epochs']:g} + {c['finetune_epochs']:g} (fine-tuning "
             f"LR {c.get('finetune_lr', 'default')}); dense top-1 {dense_top1:.2f}%. {len(rows)} of the plan's "
             f"{len(plan.candidates)} candidates, each trained like budget_fmnist.py's searched arm, seeds "
             f"{', '.join(map(str, seeds))}; top-1 on the 10k test images. Load average {doc['load']}; "
             f"{doc['seconds_total'] / 60:.0f} min.", "",
             "| candidate | method | adaptive-BN top-1 | MACs | params | " + " | ".join(f"seed {s}" for s in seeds)
             + " | mean |", "|---:|---|---:|---:|---:|" + "---:|" * (len(seeds) + 1)]
    for r in rows:
        lines.append(f"| {r['candidate']} | {r['method']} | {r['abn_top1']:.1f}% | {C.fmt_int(r['macs'])} | "
                     f"{C.fmt_int(r['params'])} | " + " | ".join(f"{s['top1']:.2f}" for s in r["seeds"])
                     + f" | {r['mean']:.2f} |")
    s = summary
    lines += ["", f"Spread of the means (max - min): {s['spread_of_means']:.2f} pt; standard deviation of the means "
              f"{s['sd_of_means']:.2f} pt; seed noise: pooled SD {s['seed_sd']:.2f} pt, so one mean's SE "
              f"{s['se_of_a_mean']:.2f} pt; rank correlation (Spearman) of the adaptive-BN score with the final "
              f"top-1 {s['spearman_abn_vs_final']:+.2f} over {len(rows)} allocations.", ""]
    out = Path(args.out) if args.out else (C.WORK if mode == "smoke" else C.RESULTS) / f"allocation_spread_{mode}_{args.budget.replace('=', '_')}" \
        f"{'_split' + args.split.replace(',', '-') if args.split else ''}"
    j, m = C.write_results(out, doc, "\n".join(lines) + "\n")
    C.log(f"wrote {j} and {m}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
