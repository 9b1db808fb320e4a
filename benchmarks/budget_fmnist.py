"""Budget-driven pruning on Fashion-MNIST: the searched per-layer allocation vs uniform pruning vs a narrower
network trained from scratch, at the same budget and the same total epochs.

Channel counts are multiples of 8 (prune.round_to; latency budgets: of the CPU's alignment, 16 with AVX-512),
as ONNX Runtime's kernels are several times slower on other counts. For each budget (a quarter and a half of the dense model's MACs, and of its latency measured on ONNX Runtime
fp32 at batch 32 on this machine):

* searched: `prunekit`'s budget search (sensitivity with adaptive BN, cost model, greedy + candidate search)
  chooses every pointwise layer's sparsity; gradual pruning ramps each layer to it; surgery; fine-tuning;
* uniform: the same sparsity in every layer, as small as meets the same budget; same schedule and epochs;
* ranked: the plan's ranked allocation (no search: channels ranked across layers by LAMP-normalised score per
  MAC their removal saves, sized to the budget, at latency budgets to the measured latency; prunekit's default,
  `--budget-allocation ranked`);
* uniform_fill: uniform, then channels added back (multiples of 8) to the layers with the lowest kept fraction
  while the budget allows (`--budget-allocation uniform_fill`): uniform with multiples of 8 can leave a few percent
  of the budget unused, so this arm separates "which layers" from "how much of the budget";
* global (MAC budgets): scope=global with target=macs (one ranking across layers; no layer below half the
  channels uniform would keep it, prune.global_floor);
* width: MobileNet V1 with the largest width multiplier that meets the budget, trained from scratch for the
  dense + prune + fine-tune epochs (channels int(c x width), as Keras and the paper round them);
* narrow: the uniform arm's architecture (channel counts multiples of 8, or of the CPU's alignment at latency
  budgets) re-initialised (`prunekit train --init DIR --reinit`: the architecture's own initialiser, as the width
  baseline gets) and trained from scratch for the same total epochs: a width-multiplier network that is not
  penalised by channel counts the runtime's kernels are slow at;
* searched_scratch: the searched allocation's architecture re-initialised and trained from scratch the same way
  (Liu et al. 2019, "Rethinking the value of network pruning": does the search find a better architecture, or
  do the inherited weights matter?).

The dense start is trained once; every method runs with seeds 0 and 1 (pruning/fine-tuning seed; the scratch
baseline's initialisation). Reported: top-1 on the full 10k test set per seed, the mean, and the difference of
means with its standard error (the larger of the binomial SE and the SE over seeds); every final model's MACs,
parameters and measured latency (ONNX Runtime fp32, batch 32) against the budget.

    python benchmarks/budget_fmnist.py --quick        # CPU: width 0.5, 20k training images, 3+1+1 epochs
    python benchmarks/budget_fmnist.py                # GPU: width 1.0, full data, 20+3+5 epochs
    python benchmarks/budget_fmnist.py --quick --split 1,1,3   # prune early, fine-tune longer (same 5 epochs)
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

MODES = {
    "quick": {"width": 0.5, "train_subset": 20_000, "dense_epochs": 3, "prune_epochs": 1, "finetune_epochs": 1,
              "batch_size": 256, "lr": 0.1, "candidates": 100},
    "smoke": {"width": 0.25, "train_subset": 1_000, "dense_epochs": 1, "prune_epochs": 0.5, "finetune_epochs": 0.5,
              "batch_size": 128, "lr": 0.1, "candidates": 4},
    "full": {"width": 1.0, "train_subset": 0, "dense_epochs": 20, "prune_epochs": 3, "finetune_epochs": 5,
             "batch_size": 256, "lr": 0.1, "candidates": 300},
}
BUDGETS = ["macs=0.5x", "macs=0.25x", "latency_ms=0.5x", "latency_ms=0.25x"]
METHODS = ["searched", "uniform", "ranked", "uniform_fill", "global", "narrow", "searched_scratch", "width"]
SCRATCH = {"narrow": "uniform", "searched_scratch": "searched"}  # arm -> the pruned arm whose architecture it trains
LATENCY_BATCH = 32


def run_config(c: dict, seed: int, budget: str | None = None, extra: dict | None = None):
    from prunekit.config import parse_config

    d = {"seed": seed, "model": {"width": c["width"]}, "data": {"name": "fashion-mnist"},
         "train": {"epochs": c["dense_epochs"], "batch_size": c["batch_size"], "lr": c["lr"], "warmup_epochs": 0.5},
         "prune": {"epochs": c["prune_epochs"], "budget": budget, "budget_batch": LATENCY_BATCH,
                   "search_candidates": c["candidates"], "round_to": 8, "schedule": {"end_epoch": 0.6 *
                                                                                      c["prune_epochs"]}},
         "finetune": {"epochs": c["finetune_epochs"], **({"lr": c["finetune_lr"]} if c.get("finetune_lr") else {})}}
    if c.get("distill"):  # the pruned arms learn from the dense model too (the scratch baselines have none)
        d["prune"]["distill"] = d["finetune"]["distill"] = c["distill"]
    for k, v in (extra or {}).items():
        d.setdefault(k, {}).update(v)
    return parse_config(d)


REFERENCE: dict[str, Any] = {}  # the dense model: every latency is timed interleaved with it


def measure(model, shape) -> dict[str, Any]:
    """MACs and parameters; ORT fp32 batch-32 latency timed interleaved with the dense model, reported as the
    ratio to it and on the dense model's first measurement's scale (ratio x that), so the machine's drift
    between arms cancels. That scale is the dense model's fastest of three passes 2 s apart: one pass timed in a
    slow phase of the machine (or beside another job) had put every millisecond of a run 2.7x too high."""
    from prunekit.cost import profile
    from prunekit.inference.latency import Timer, measure_models, measure_ratio

    p = profile(model, shape)
    timer = Timer("onnxruntime-fp32", LATENCY_BATCH, torch.get_num_threads()).careful()
    if "model" not in REFERENCE:
        REFERENCE["model"] = model
        passes = []
        for i in range(3):
            if i:
                time.sleep(2.0)
            passes.append(measure_models([model], shape, timer)[0])
        REFERENCE["ms"] = min(passes)
        return {"params": p.params, "macs": p.macs, "latency_ms_b32": REFERENCE["ms"], "latency_vs_dense": 1.0}
    r = measure_ratio(model, REFERENCE["model"], shape, timer)  # one interleaved pass: no budget to decide
    return {"params": p.params, "macs": p.macs, "latency_ms_b32": r["ratio"] * REFERENCE["ms"],
            "latency_vs_dense": r["ratio"], "latency_ms_b32_raw": r["model_ms"], "dense_ms_b32_raw": r["dense_ms"]}


def finish(run: Path, pruned_dir, cfg, bundle, t0, dense_dir) -> dict[str, Any]:
    """surgery -> fine-tune -> test top-1 and costs."""
    from prunekit import steps
    from prunekit.saved import load

    s = steps.surgery(pruned_dir, run / "shrunk")
    teacher = load(dense_dir / "model").model.eval() if cfg.finetune.distill > 0 else None
    ft = steps.finetune(cfg, s.model_dir, run / "ft", data=bundle, log=C.log, teacher=teacher)
    model = load(ft.model_dir).model
    return {"top1": ft.test["top1"], "n": ft.test["n"], **measure(model, (1, 28, 28)),
            "seconds": round(time.perf_counter() - t0, 1)}


def width_for(kind: str, target: float, c: dict, cache: dict) -> float:
    """The largest width (2 decimals) whose MobileNet V1 meets the target (MACs counted; latency: ``target`` is
    the budget's ratio to the dense model, measured interleaved with it)."""
    def cost(w: float) -> float:
        if (kind, w) not in cache:
            m = C.mobilenet(w, 0).eval()
            if kind == "macs":  # counted: no need to time it
                from prunekit.cost import profile

                cache[(kind, w)] = profile(m, (1, 28, 28)).macs
            else:
                cache[(kind, w)] = measure(m, (1, 28, 28))["latency_vs_dense"]
        return cache[(kind, w)]

    lo, hi = 0.05, c["width"]
    for _ in range(12):
        mid = round((lo + hi) / 2, 2)
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if cost(mid) <= target else (lo, mid)
    return lo


def global_tag(c: dict) -> str:
    """The global arm's settings in its directory name (a non-default floor or normalisation)."""
    return (f"_floor{c['global_floor']:g}" if c.get("global_floor") is not None else "") + \
        (f"_{c['global_norm']}" if c.get("global_norm") else "") + \
        {True: "_percost", False: "_nopercost", None: ""}[c.get("global_per_cost")]


def arm_dir(work: Path, budget: str, name: str, seed: int, tag: str = "") -> Path:
    """A pruned arm's run directory (prune/, shrunk/, ft/; the from-scratch arms train its shrunk architecture
    in from_scratch/); ``tag``: :func:`global_tag`, for the global arm."""
    return work / f"{budget.replace('=', '_')}_{name}{tag if name == 'global' else ''}_s{seed}"


def arm_model_dir(work: Path, budget: str, name: str, seed: int, width: float | None, tag: str = "") -> Path:
    """Where an arm's final model is."""
    if name == "width":
        return work / f"width{width}_s{seed}" / "model"
    if name in SCRATCH:
        return arm_dir(work, budget, SCRATCH[name], seed) / "from_scratch" / "model"
    return arm_dir(work, budget, name, seed, tag) / "ft" / "model"


def correct_on_test(model_dir: Path, bundle) -> np.ndarray:
    """Per test image: is the model's top-1 right (the same 10k images for every arm)."""
    from prunekit.data.bundle import iterate_batches
    from prunekit.saved import load

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load(model_dir).model.eval().to(device)
    out = []
    with torch.inference_mode():
        for x, y in iterate_batches(bundle, "test", 1000, train=False):
            out.append((model(x.to(device)).argmax(1).cpu() == y).numpy())
    return np.concatenate(out)


def paired(entries: list[dict], work: Path, bundle, tag: str = "") -> None:
    """Seed-matched differences against the entry's base arm, on the same test images: per seed the difference
    of accuracies with its paired (McNemar) standard error, sqrt(b + c - (b - c)^2 / n) / n for b, c the images
    only one of the two gets right; over seeds the mean, and an SE that is the larger of the combined paired SE
    and the standard error of the per-seed differences over seeds (training noise; half their spread at 2 seeds).
    Adds ``entry["paired"]``."""
    cache: dict[Path, np.ndarray] = {}

    def correct(d: Path) -> np.ndarray:
        if d not in cache:
            cache[d] = correct_on_test(d, bundle)
        return cache[d]

    for e in entries:
        if not e.get("methods"):
            continue
        base = e.get("base") or _pick_base(e["methods"])
        e["paired"] = {}
        for k, rows in e["methods"].items():
            if k == base:
                continue
            per = []
            for r in rows:
                a_dir = arm_model_dir(work, e["budget"], base, r["seed"], e.get("width"), tag)
                b_dir = arm_model_dir(work, e["budget"], k, r["seed"], e.get("width"), tag)
                missing = [d for d in (a_dir, b_dir) if not (d / "model.json").is_file()]
                if missing:
                    raise SystemExit(f"--paired: no saved model at {missing[0]} (the run's work directory; same "
                                     "--quick/--split/--distill as the run?)")
                a, b = correct(a_dir), correct(b_dir)
                base_row = next((x for x in e["methods"][base] if x["seed"] == r["seed"]), None)
                for arr, row, d in ((a, base_row, a_dir), (b, r, b_dir)):  # the saved model is the one measured
                    if row is not None and abs(100 * arr.mean() - row["top1"]) > 0.011:
                        raise SystemExit(f"--paired: {d} scores {100 * arr.mean():.2f}% now, {row['top1']:.2f}% "
                                         "in the result file: not the same model")
                n, only_a, only_b = len(a), int((a & ~b).sum()), int((b & ~a).sum())
                se = 100 * math.sqrt(max(only_a + only_b - (only_a - only_b) ** 2 / n, 0.0)) / n
                per.append({"seed": r["seed"], "diff": 100 * (only_a - only_b) / n, "se": se,
                            "only_base": only_a, "only_method": only_b})
            if per:
                diffs = [p["diff"] for p in per]
                se = max(math.sqrt(sum(p["se"] ** 2 for p in per)) / len(per), C.seed_se(diffs))
                e["paired"][k] = {"base": base, "diff": float(np.mean(diffs)), "se": se, "per_seed": per}


def merge(docs: list[dict]) -> dict:
    """Several result files of the same setup (e.g. extra arms or seeds run later into the same work directory) as
    one: per budget, the union of the methods and of each method's seeds (the first file's entry otherwise)."""
    out = copy.deepcopy(docs[0])
    by = {e["budget"]: e for e in out["results"]}
    for d in docs[1:]:
        for e in d["results"]:
            if e["budget"] not in by:
                out["results"].append(copy.deepcopy(e))
                by[e["budget"]] = out["results"][-1]
                continue
            tgt = by[e["budget"]]
            for k, v in e.get("methods", {}).items():  # another arm, or the same arm's other seeds
                rows = tgt["methods"].setdefault(k, [])
                have = {r["seed"] for r in rows}
                rows += [copy.deepcopy(r) for r in v if r["seed"] not in have]
                rows.sort(key=lambda r: r["seed"])
            if tgt.get("width") is None:
                tgt["width"] = e.get("width")
    out["seeds"] = sorted({s for d in docs for s in d["seeds"]})
    out["merged_from"] = [{"command": d["command"], "provenance": d.get("provenance")} for d in docs]
    for e in out["results"]:
        e.pop("base", None)
    return out


def stats(rows: list[dict]) -> dict[str, float]:
    tops = [r["top1"] for r in rows]
    n = rows[0]["n"]
    mean = float(np.mean(tops))
    se = max(C.binomial_se(mean, n) / math.sqrt(len(tops)), C.seed_se(tops))
    return {"mean": mean, "se": se, "seeds": tops}


def setup(args, ap: argparse.ArgumentParser) -> tuple[str, dict]:
    """The mode (smoke | quick | full) and its settings with the options' overrides (--distill, --global-floor,
    --global-norm, --finetune-lr, --split): shared with the scripts that reuse this one's arms and work dirs."""
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    c = dict(MODES[mode])
    c["distill"] = args.distill
    if args.global_floor is not None:
        c["global_floor"] = args.global_floor
    if args.global_norm is not None:
        c["global_norm"] = args.global_norm
    if args.global_per_cost is not None:
        c["global_per_cost"] = args.global_per_cost
    if args.finetune_lr is not None:
        c["finetune_lr"] = args.finetune_lr
    if args.split:
        try:
            c["dense_epochs"], c["prune_epochs"], c["finetune_epochs"] = (float(v) for v in args.split.split(","))
        except ValueError:
            ap.error(f"--split wants three numbers D,P,F, got {args.split!r}")
    return mode, c


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="a tiny end-to-end check of this script (numbers mean nothing)")
    ap.add_argument("--data-dir")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--budgets", default=",".join(BUDGETS))
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--distill", type=float, default=0.0, help="distillation weight from the dense model in the "
                    "pruned arms' prune and fine-tune stages (default 0: none)")
    ap.add_argument("--split", help="dense,prune,fine-tune epochs instead of the mode's (e.g. 1,1,3: prune early, "
                    "fine-tune longer); the scratch baselines train their sum")
    ap.add_argument("--finetune-lr", type=float, default=None, help="the pruned arms' fine-tuning learning rate "
                    "(default: the library's, train.lr since 2026-11-30; train.lr / 2 before)")
    ap.add_argument("--global-floor", type=float, default=None, help="prune.global_floor of the global arm "
                    "(default: the library's)")
    ap.add_argument("--global-norm", choices=["mean", "lamp"], default=None, help="prune.global_norm of the global "
                    "arm (default: the library's)")
    ap.add_argument("--global-per-cost", action=argparse.BooleanOptionalAction, default=None,
                    help="prune.global_per_cost of the global arm (channels ranked by score per MAC their removal "
                    "saves; default: the library's, on since 2026-12-01)")
    ap.add_argument("--methods", default=",".join(METHODS), help="arms to run (default all: %(default)s); "
                    "differences are taken against searched, or the first arm run")
    ap.add_argument("--paired", nargs="+", metavar="JSON", help="no training: read these result files of one setup "
                    "(merged), evaluate every arm's saved model on the test set, add seed-matched paired differences "
                    "and write --out")
    ap.add_argument("--combine", nargs="+", metavar="PAIRED_JSON", help="no training, no evaluation: pool the "
                    "seed-matched differences of several --paired result files (other seeds of the same comparison, "
                    "e.g. run on another machine) and write --out")
    ap.add_argument("--base", choices=METHODS, default=None, help="with --paired: the arm every other is compared "
                    "with (default: searched, else ranked, else the first)")
    ap.add_argument("--tag", default="", help="a name for this variant of the setup (e.g. after a library change): "
                    "its own work directory for the pruned arms and result file name, the same dense model")
    ap.add_argument("--out", default=None)
    ap.add_argument("--show-dirs", action="store_true", help="print the arms' work directory and the dense model's "
                    "directory for these options, and exit (for scripts that run budgets side by side)")
    args = ap.parse_args(argv)
    methods = args.methods.split(",")
    if not methods or set(methods) - set(METHODS):
        ap.error(f"--methods: choose from {','.join(METHODS)}, got {args.methods!r}")
    mode, c = setup(args, ap)
    if args.show_dirs:
        print("\n".join(str(d) for d in _work_dirs(args, mode)))
        return 0
    seeds = [int(s) for s in args.seeds.split(",")]
    budgets = args.budgets.split(",")
    C.setup_threads(args.threads or None)
    from prunekit import steps
    from prunekit.errors import PrunekitError
    from prunekit.saved import load
    from prunekit.train import DistContext, pick_device

    if args.paired:
        return paired_main(args, mode, c)
    if args.combine:
        return combine_main(args)
    device = pick_device("auto")
    ctx = DistContext(device=device)
    env = C.environment(device)
    work, dense_dir = _work_dirs(args, mode)
    t_all = time.perf_counter()
    bundle = C.load_fmnist(args.data_dir, c["train_subset"])
    with C.LoadSampler() as ls:
        cfg0 = run_config(c, 0)
        if not (dense_dir / "model" / "model.json").is_file():
            C.log(f"dense: MobileNet V1 {c['width']}, {c['dense_epochs']} epochs")
            steps.train(cfg0, dense_dir, data=bundle, ctx=ctx, log=C.log)
        dense = load(dense_dir / "model")
        dense_info = {"top1": dense.spec.extra["metrics"]["test"]["top1"], **measure(dense.model, (1, 28, 28))}
        C.log(f"dense: {dense_info}")
        width_cache: dict = {}
        results = []
        for budget in budgets:  # a latency plan makes the uniform_fill allocation only when asked for it
            cfg = run_config(c, 0, budget, {"prune": {"budget_allocation": "uniform_fill"}} if "uniform_fill" in
                             methods else None)
            t0 = time.perf_counter()
            try:
                plan = steps.plan_budget(cfg, dense_dir / "model", work / budget.replace("=", "_") / "plan",
                                         data=bundle, device=device, log=C.log)
            except PrunekitError as e:  # recorded, not fatal: the other budgets still run
                C.log(f"{budget}: {e}")
                results.append({"budget": budget, "error": str(e), "methods": {}})
                continue
            plan_s = time.perf_counter() - t0
            dense_cost = plan.dense_cost
            kind = budget.split("=")[0]
            w = width_for(kind, plan.target / dense_cost if kind == "latency_ms" else plan.target, c, width_cache) \
                if "width" in methods else None
            entry = {"budget": budget, "target": plan.target, "dense_cost": dense_cost, "plan_seconds": plan_s,
                     "predicted": plan.allocation.cost, "allocation": plan.allocation.to_dict(),
                     "uniform_allocation": plan.uniform.to_dict(), "width": w, "methods": {}}
            results.append(entry)

            def save_partial() -> None:  # after every arm: a run stopped by a time box keeps what finished
                doc = _doc(c, env, dense_info, results, ls, t_all, seeds, partial=True)
                C.write_results(_prefix(args, mode), doc, markdown(doc))
            arms = {k: plan for k in ("searched", "uniform", "ranked", "uniform_fill")}  # budget_allocation: which
            if budget.startswith("macs"):
                arms["global"] = None
            arms = {k: v for k, v in arms.items() if k in methods}
            for seed in seeds:
                for name, arm in arms.items():
                    t0 = time.perf_counter()
                    run = arm_dir(work, budget, name, seed, global_tag(c))
                    if name == "global":
                        frac = plan.target / dense_cost
                        gcfg = run_config(c, seed, None, {"prune": {
                            "scope": "global", "target": "macs", "final_sparsity": round(1 - frac, 4),
                            **{k: c[k] for k in ("global_floor", "global_norm", "global_per_cost") if k in c}}})
                        pr = steps.prune(gcfg, dense_dir / "model", run / "prune", data=bundle,
                                         ctx=ctx, log=C.log)
                    else:
                        scfg = run_config(c, seed, budget, {"prune": {"budget_allocation": name}})
                        pr = steps.prune(scfg, dense_dir / "model", run / "prune", data=bundle,
                                         ctx=ctx, log=C.log, plan=arm)
                    rec = finish(run, pr.model_dir, run_config(c, seed, budget), bundle, t0, dense_dir)
                    rec["budget_check"] = {k: (pr.budget or {}).get(k) for k in ("predicted", "measured", "met")}
                    entry["methods"].setdefault(name, []).append({"seed": seed, **rec})
                    C.log(f"{budget} {name} seed {seed}: top-1 {rec['top1']:.2f}% MACs {rec['macs']:,} "
                          f"latency {rec['latency_ms_b32']:.2f} ms")
                    save_partial()
                for name in [m for m in methods if m in SCRATCH]:  # a pruned arm's architecture, from scratch
                    t0 = time.perf_counter()
                    run = arm_dir(work, budget, SCRATCH[name], seed)
                    shrunk = run / "shrunk"
                    if not (shrunk / "model.json").is_file():
                        ap.error(f"{name} trains {SCRATCH[name]}'s architecture: run {SCRATCH[name]} first ({shrunk})")
                    ncfg = run_config(c, seed, None, {"model": {"reinit": True}, "train": {  # `prunekit train --reinit`
                        "epochs": c["dense_epochs"] + c["prune_epochs"] + c["finetune_epochs"]}})
                    tr = steps.train(ncfg, run / "from_scratch", init=shrunk, data=bundle, ctx=ctx,
                                     log=C.log)
                    m = load(tr.model_dir).model
                    entry["methods"].setdefault(name, []).append(
                        {"seed": seed, "top1": tr.test["top1"], "n": tr.test["n"], **measure(m, (1, 28, 28)),
                         "seconds": round(time.perf_counter() - t0, 1)})
                    C.log(f"{budget} {name} seed {seed}: top-1 {tr.test['top1']:.2f}%")
                    save_partial()
                if "width" not in methods:
                    continue
                t0 = time.perf_counter()
                wcfg = run_config(c, seed, None, {"model": {"width": w}, "train": {
                    "epochs": c["dense_epochs"] + c["prune_epochs"] + c["finetune_epochs"]}})
                tr = steps.train(wcfg, work / f"width{w}_s{seed}", data=bundle, ctx=ctx, log=C.log)
                m = load(tr.model_dir).model
                entry["methods"].setdefault("width", []).append(
                    {"seed": seed, "top1": tr.test["top1"], "n": tr.test["n"], **measure(m, (1, 28, 28)),
                     "seconds": round(time.perf_counter() - t0, 1)})
                save_partial()
    doc = _doc(c, env, dense_info, results, ls, t_all, seeds)
    j, m = C.write_results(_prefix(args, mode), doc, markdown(doc))
    C.log(f"wrote {j} and {m}")
    return 0


def paired_main(args, mode: str, c: dict) -> int:
    import json

    docs = [json.loads(Path(p).read_text()) for p in args.paired]
    if len({json.dumps(d["config"], sort_keys=True) for d in docs}) != 1:
        raise SystemExit("--paired: the result files come from different setups (config differs)")
    doc = merge(docs) if len(docs) > 1 else docs[0]
    work, _ = _work_dirs(args, mode)
    bundle = C.load_fmnist(args.data_dir, c["train_subset"])
    _summarise(doc["results"], args.base)
    paired(doc["results"], work, bundle, global_tag(doc["config"]))
    doc["paired_command"] = C.command_line()
    prefix = Path(args.out) if args.out else Path(args.paired[0]).with_name(Path(args.paired[0]).stem + "_paired")
    j, m = C.write_results(prefix, doc, markdown(doc))
    C.log(f"wrote {j} and {m}")
    return 0


def combine(docs: list[dict]) -> list[dict]:
    """Per budget and compared pair of arms, the per-seed paired differences of every file pooled (a seed may appear
    once), with the same SE rule as :func:`paired`."""
    pooled: dict[tuple[str, str, str], list[dict]] = {}
    for i, d in enumerate(docs):
        for e in d["results"]:
            for k, pr in (e.get("paired") or {}).items():
                rows = pooled.setdefault((e["budget"], pr["base"], k), [])
                seen = {r["seed"] for r in rows}
                for r in pr["per_seed"]:
                    if r["seed"] in seen:
                        raise SystemExit(f"--combine: seed {r['seed']} of {e['budget']} {pr['base']} vs {k} is in "
                                         "two files")
                    rows.append({**r, "file": i})
    out = []
    for (budget, base, k), rows in pooled.items():
        diffs = [r["diff"] for r in rows]
        se = max(math.sqrt(sum(r["se"] ** 2 for r in rows)) / len(rows), C.seed_se(diffs))
        out.append({"budget": budget, "base": base, "method": k, "seeds": [r["seed"] for r in rows],
                    "diff": float(np.mean(diffs)), "se": se, "per_seed": rows})
    return out


def combine_main(args) -> int:
    import json

    if not args.out:
        raise SystemExit("--combine needs --out")
    docs = [json.loads(Path(p).read_text()) for p in args.combine]
    budgets = set(args.budgets.split(","))
    rows = [r for r in combine(docs) if r["budget"] in budgets]
    src = [{"file": p, "commit": d["provenance"]["git_commit"][:10], "cpu": d["environment"].get("cpu"),
            "cpu_class": d["environment"].get("cpu_class"), "created": d["provenance"].get("recorded")}
           for p, d in zip(args.combine, docs, strict=True)]
    doc = {"command": C.command_line(), "sources": src, "combined": rows, "environment": C.environment(torch.device("cpu")),
           "provenance": C.provenance()}
    lines = ["# Budget-driven pruning: paired differences pooled over result files", "",
             C.provenance_line(doc["provenance"]) + " (this file only pools; each source records its own run).", "",
             "| source | commit | CPU | class | run |", "|---|---|---|---|---|",
             *(f"| `{Path(s['file']).name}` | {s['commit']} | {s['cpu']} | {s['cpu_class']} | {s['created']} |"
               for s in src), "",
             "| budget | base − method | seeds | per-seed differences (pt) | pooled (± SE) | SE units |",
             "|---|---|---|---|---|---:|"]
    for r in rows:
        per = ", ".join(f"{x['diff']:+.2f}" for x in r["per_seed"])
        lines.append(f"| {r['budget']} | {r['base']} − {r['method']} | {len(r['seeds'])} | {per} | "
                     f"{r['diff']:+.2f} ± {r['se']:.2f} | {r['diff'] / r['se'] if r['se'] else float('nan'):.1f} |")
    lines += ["", "Per seed: the difference of top-1 on the same 10k test images; the pooled SE is the larger of the "
              "combined McNemar SE and the standard error of the per-seed differences (as in `--paired`). Seeds run "
              "on different machines are paired within the machine: both arms of a seed come from one run.", ""]
    j, m = C.write_results(Path(args.out), doc, "\n".join(lines))
    C.log(f"wrote {j} and {m}")
    return 0


def _variant(args, arms: bool = True) -> str:
    """The name suffix of a variant of the setup: the split, then (``arms``: what changes the pruned arms alone)
    the fine-tuning LR, distillation and --tag."""
    tag = "_split" + "-".join(f"{float(v):g}" for v in args.split.split(",")) if args.split else ""
    if not arms:
        return tag
    tag += f"_ftlr{args.finetune_lr:g}" if args.finetune_lr else ""
    tag += f"_distill{round(args.distill * 100)}" if args.distill else ""
    return tag + (f"_{args.tag}" if getattr(args, "tag", "") else "")


def _work_dirs(args, mode: str) -> tuple[Path, Path]:
    """(the arms' work directory, the dense model's directory): a --finetune-lr, --distill or --tag variant runs
    its arms in their own directory from the same dense model."""
    dense_work = C.WORK / f"budget_fmnist_{mode}{_variant(args, arms=False)}"
    return C.WORK / f"budget_fmnist_{mode}{_variant(args)}", dense_work / "dense"


def _prefix(args, mode: str) -> Path:
    if args.out:
        return Path(args.out)
    suffix = _variant(args)
    return (C.WORK if mode == "smoke" else C.RESULTS) / (("budget_fmnist" if mode == "full" else
                                                          f"budget_fmnist_{mode}") + suffix)


def _summarise(results: list[dict], base: str | None = None) -> None:
    """Per budget: each arm's mean ± SE, and the difference of means against the base arm (``base`` where it ran,
    else searched, ranked or the first arm run) with the unpaired SE."""
    for e in results:
        if not e.get("methods"):
            continue
        e["stats"] = {k: stats(v) for k, v in e["methods"].items()}
        e["base"] = base if base in e["stats"] else _pick_base(e["stats"])
        b = e["stats"][e["base"]]
        e["differences"] = {k: {"diff": b["mean"] - v["mean"], "se": math.hypot(b["se"], v["se"])}
                            for k, v in e["stats"].items() if k != e["base"]}


def _doc(c, env, dense, results, ls, t_all, seeds, partial=False) -> dict[str, Any]:
    _summarise(results)
    return {"command": C.command_line(), "config": c, "seeds": seeds, "environment": env,
            "provenance": env.get("provenance"), "dense": dense, "results": results, "load": ls.summary(),
            "seconds_total": round(time.perf_counter() - t_all, 1), "partial": partial,
            "notes": ["The dense start is trained once (seed 0); seeds vary pruning/fine-tuning and the scratch "
                      "baseline's initialisation.", "Latency: ONNX Runtime fp32, batch 32, this machine's threads; "
                      "a latency budget is met within a 5% measurement allowance. Every latency is timed interleaved with the "
                      "dense model (rounds alternate between the two) and reported as the ratio to it, and on the "
                      "scale of the dense model's first measurement: this machine's speed drifts by up to a third "
                      "over minutes, which the ratio cancels."]}


def _pick_base(methods: dict) -> str:
    """The arm the others are compared with: the searched allocation, else the ranked one, else the first."""
    return next((k for k in ("searched", "ranked") if k in methods), next(iter(methods)))


def _base(doc: dict) -> str:
    bases = {e.get("base", "searched") for e in doc["results"] if e.get("methods")}
    return bases.pop() if len(bases) == 1 else "searched"


def markdown(doc: dict) -> str:
    c = doc["config"]
    has_paired = any(e.get("paired") for e in doc["results"])
    lines = ["# Budget-driven pruning on Fashion-MNIST", "", C.provenance_line(doc["provenance"]), "",
             f"MobileNet V1 width {c['width']}, {c['train_subset'] or 60000} training images, full 10k test set; "
             f"dense {c['dense_epochs']:g} epochs, then prune {c['prune_epochs']:g} + fine-tune "
             f"{c['finetune_epochs']:g}; "
             f"the width baseline trains {c['dense_epochs'] + c['prune_epochs'] + c['finetune_epochs']:g} epochs from "
             f"scratch. Seeds {doc['seeds']}."
             + (f" The pruned arms distil from the dense model (weight {c['distill']:g}) while pruning and "
                "fine-tuning; the scratch baselines have no teacher." if c.get("distill") else "")
             + (f" The global arm uses prune.global_floor {c['global_floor']:g}." if c.get("global_floor") is not None
                else "")
             + (f" The global arm uses prune.global_norm {c['global_norm']}." if c.get("global_norm") else "")
             + ({True: " The global arm ranks channels per MAC saved (prune.global_per_cost).",
                 False: " The global arm ranks channels by score alone (prune.global_per_cost false).", None: ""}
                [c.get("global_per_cost")])
             + (f" Fine-tuning learning rate {c['finetune_lr']:g}." if c.get("finetune_lr") else "")
             + f" Dense: top-1 {doc['dense']['top1']:.2f}%, {doc['dense']['macs']:,} MACs, {doc['dense']['latency_ms_b32']:.2f} ms (ORT fp32, batch 32).", "",
             f"| budget | method | top-1 per seed | mean ± SE | {_base(doc)} − method (± SE) |"
             + (" paired (± SE) |" if has_paired else "")
             + " MACs | latency b32 (ms) | latency / dense | budget met |",
             "|---|---|---|---|---|" + ("---|" if has_paired else "") + "---:|---:|---:|---|"]
    for e in doc["results"]:
        if "error" in e:
            lines.append(f"| {e['budget']} | (not run: {e['error']}) | | | | | | | |")
            continue
        for k, st in e["stats"].items():
            rows = e["methods"][k]
            d = e["differences"].get(k)
            met = [r.get("budget_check", {}).get("met") for r in rows]
            if all(m is None for m in met):  # baselines: checked here the same way (latency: the interleaved ratio)
                lat = e["budget"].startswith("latency")
                met = [(r.get("latency_vs_dense", math.inf) <= e["target"] / e["dense_cost"] * 1.05) if lat
                       else r["macs"] <= e["target"] for r in rows]
            name = f"{k} (width {e['width']})" if k == "width" else \
                f"{SCRATCH[k].replace('searched', 'searched allocation')}'s channels, from scratch" if k in SCRATCH \
                else k
            diff = "" if d is None else f"{d['diff']:+.2f} ± {d['se']:.2f}"
            pd = (e.get("paired") or {}).get(k)
            if has_paired:
                diff += " | " + ("" if pd is None else f"{pd['diff']:+.2f} ± {pd['se']:.2f}")
            per_seed = ", ".join(f"{t:.2f}" for t in st["seeds"])
            lines.append(f"| {e['budget']} | {name} | {per_seed} | {st['mean']:.2f} ± {st['se']:.2f} | {diff} | "
                         f"{int(np.mean([r['macs'] for r in rows])):,} | "
                         f"{np.mean([r['latency_ms_b32'] for r in rows]):.2f} | "
                         f"{np.mean([r.get('latency_vs_dense', float('nan')) for r in rows]):.2f} | "
                         f"{'yes' if all(met) else ('-' if all(m is None for m in met) else 'NO')} |")
    lines += ["", f"Total {doc['seconds_total'] / 60:.0f} min; load average {doc['load']}.", ""]
    picks = [e for e in doc["results"] if (e.get("allocation") or {}).get("confirm")]
    if picks:
        lines += ["The plan's pick checked against uniform's allocation on fresh held-out training images "
                  "(`prune.search_confirm_images`; adaptive BN, before training):", ""]
        for e in picks:
            c = e["allocation"]["confirm"]
            lines.append(f"- {e['budget']}: {c['searched_top1']:.2f}% vs {c['uniform_top1']:.2f}% on {c['images']} "
                         f"images, {c['diff']:+.2f} ± {c['se']:.2f} paired: "
                         + ("kept" if c["kept"] == "searched" else "not confirmed, uniform's allocation used")
                         + f" ({e['allocation']['method']}).")
        lines.append("")
    if doc.get("merged_from"):
        lines += ["Merged from the runs of: " + "; ".join(f"`{m['command']}` (commit "
                                                          f"{(m.get('provenance') or {}).get('git_commit', '?')[:7]})"
                                                          for m in doc["merged_from"]), ""]
    if has_paired:
        lines += ["Paired: the same comparison seed by seed on the same 10k test images (`--paired`): per seed the "
                  "difference of accuracies with its McNemar standard error (from the images only one of the two "
                  "models gets right); over seeds the mean, with the larger of the combined SE and the standard "
                  "error of the per-seed differences (half their spread at 2 seeds). The unpaired column treats the two arms' test errors as "
                  "independent, which overstates the noise of a difference measured on the same images.", ""]
    lines += [f"- {n}" for n in doc["notes"]]
    lines.append("- Budget met: for searched and uniform, the prune step's own check (`OUT/budget.json`); for the "
                 "baselines, the same test on this benchmark's measurement. A width row marked NO: no width "
                 "multiplier down to 0.05 meets the budget (the bisection's floor).")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
