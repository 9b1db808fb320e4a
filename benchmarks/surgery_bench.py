"""Graph build + surgery + verification time, side by side with Torch-Pruning on the same models.

prunekit, per model (fresh model each repeat, median over repeats):

* ``graph``   -- ``DependencyGraph(model, input_shape)`` (torch.fx trace, shape propagation, channel analysis)
* ``select``  -- L1 scores of every prunable group (``select("all")``) and the lowest ``ratio`` of each
* ``surgery`` -- ``copy.deepcopy`` + ``apply_surgery`` (physically remove the channels)
* ``verify``  -- masked-model reference forward + shrunk forward on a batch of ``--verify-batch`` and compare
* ``total``   -- the sum; ``api`` is the user-facing ``DependencyGraph`` + ``shrink()`` (which also profiles
  params/MACs before and after) measured separately.

Torch-Pruning (benchmark-only peer, ``pip install torch-pruning``; never imported by prunekit):

* ``build``   -- ``tp.DependencyGraph().build_dependency(model, example_inputs)``
* ``prune``   -- for every group of ``DG.get_all_groups(ignored_layers=[classifier])``:
  ``tp.importance.MagnitudeImportance(p=1)`` scores, the lowest ``ratio`` of its channels, ``group.prune(idxs)``
* ``total``   -- build + prune (Torch-Pruning does not verify the result).

Usage::

    python benchmarks/surgery_bench.py                  # resnet50, mobilenet_v2, MobileNet V1 at 224, 5 repeats
    python benchmarks/surgery_bench.py --quick          # 64x64, 2 repeats
    python benchmarks/surgery_bench.py --threads 2

Writes ``benchmarks/results/surgery_bench.{json,md}`` (``--quick``: ``benchmarks/results/_work/``).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn

from prunekit.graph import DependencyGraph
from prunekit.graph.masking import masked
from prunekit.models import create_model
from prunekit.pruning import get_criterion
from prunekit.surgery import _run_eval, apply_surgery, example_inputs, shrink, verify

ROOT = Path(__file__).resolve().parent
MODELS = {
    "resnet50": ("torchvision:resnet50", {}, "fc"),
    "mobilenet_v2": ("torchvision:mobilenet_v2", {}, "classifier.1"),
    "mobilenet_v1": ("mobilenet_v1", {"width": 1.0}, "classifier"),
}


def machine() -> dict:
    from prunekit.inference.bench import cpu_model

    cpu = cpu_model()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "torchvision": torchvision.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "loadavg_at_start": load,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def fresh(name: str) -> nn.Module:
    """A new model with random BN statistics/affine (a fresh torchvision model's outputs can be ~1e-20, which
    would make the verification meaningless)."""
    arch, kwargs, _ = MODELS[name]
    torch.manual_seed(0)
    model = create_model(arch, **kwargs).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
                m.weight.copy_(torch.randn(c, generator=g) * 0.1 + 1.0)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
    return model


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def ours_once(name: str, shape: tuple, ratio: float, verify_batch: int) -> dict:
    model = fresh(name)
    x = example_inputs(shape, batch=verify_batch)
    t0 = time.perf_counter()
    graph = DependencyGraph(model, shape)
    t1 = time.perf_counter()
    groups = graph.select("all")
    scores = get_criterion("l1").scores(model, graph, groups)
    removed = {}
    for g in groups:
        k = int(ratio * g.size)
        if k:
            removed[g.name] = np.argsort(scores[g.id], kind="stable")[:k].tolist()
    t2 = time.perf_counter()
    target = copy.deepcopy(model)
    apply_surgery(target, graph, removed)
    t3 = time.perf_counter()
    with masked(model, graph, removed):
        ref = _run_eval(model, x)
    diff = verify(ref, target, x)
    t4 = time.perf_counter()
    return {"graph_s": t1 - t0, "select_s": t2 - t1, "surgery_s": t3 - t2, "verify_s": t4 - t3, "total_s": t4 - t0,
            "params_before": n_params(model), "params_after": n_params(target), "max_abs_diff": diff,
            "groups": len(graph.groups), "pruned_groups": len(removed),
            "channels_removed": sum(len(v) for v in removed.values())}


def ours_api_once(name: str, shape: tuple, ratio: float) -> float:
    """The user-facing path: DependencyGraph + shrink() (which also profiles params/MACs twice)."""
    model = fresh(name)
    t0 = time.perf_counter()
    graph = DependencyGraph(model, shape)
    removed = {g.name: list(range(int(ratio * g.size))) for g in graph.select("all") if int(ratio * g.size)}
    shrink(model, shape, removed, graph=graph)
    return time.perf_counter() - t0


def tp_once(name: str, shape: tuple, ratio: float) -> dict:
    import torch_pruning as tp

    model = fresh(name)
    before = n_params(model)
    x = torch.randn(1, *shape)
    ignored = [model.get_submodule(MODELS[name][2])]
    t0 = time.perf_counter()
    DG = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    t1 = time.perf_counter()
    imp = tp.importance.MagnitudeImportance(p=1)
    n_groups, removed = 0, 0
    for group in DG.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d, nn.Linear]):
        scores = imp(group)
        k = int(ratio * len(scores))
        if k:
            idxs = torch.argsort(scores)[:k].tolist()
            group.prune(idxs=idxs)
            n_groups += 1
            removed += k
    t2 = time.perf_counter()
    with torch.no_grad():
        model(x)  # the pruned model still runs (not timed)
    return {"build_s": t1 - t0, "prune_s": t2 - t1, "total_s": t2 - t0, "params_before": before,
            "params_after": n_params(model), "pruned_groups": n_groups, "channels_removed": removed}


def median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def markdown(doc: dict) -> str:
    m = doc["machine"]
    out = [
        "# Surgery benchmark: prunekit vs Torch-Pruning",
        "",
        f"Generated by `benchmarks/surgery_bench.py{' --quick' if doc['quick'] else ''}` on {m['date']}: {m['cpu']}, "
        f"{m['cores']} cores, {m['torch_threads']} torch thread(s), torch {m['torch']}, torchvision "
        f"{m['torchvision']}, torch-pruning {doc.get('torch_pruning', 'n/a')}, load average at start "
        f"{m['loadavg_at_start']}.",
        "",
        f"Input {doc['input']}, {int(doc['ratio'] * 100)}% of the channels of every prunable group removed (lowest L1 "
        f"on both sides), median of {doc['repeats']} runs on fresh models (one warm-up run first). prunekit "
        f"verifies the shrunk model against the masked model on a batch of {doc['verify_batch']}; Torch-Pruning "
        "does not verify. `api` is prunekit's user-facing `DependencyGraph` + `shrink()` (which also profiles "
        "params/MACs before and after).",
        "",
        "**Timings were taken on a shared machine with other workers running (see the load average); rerun on a "
        "quiet machine for publishable numbers. On a busy 2-core machine use `--threads 1`: two OpenMP threads "
        "competing with other processes can be 10x slower.**",
        "",
        "| model | prunekit graph s | select s | surgery s | verify s | **total s** | api s | TP build s | TP prune s "
        "| **TP total s** | params before | params after (prunekit) | params after (TP) | max abs diff |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["results"]:
        o, t = r["prunekit"], r.get("torch_pruning") or {}

        def f(d, k):
            return f"{d[k]:.3f}" if k in d else "n/a"

        tp_after = f"{t['params_after']:,}" if "params_after" in t else "n/a"
        out.append(f"| {r['model']} | {f(o, 'graph_s')} | {f(o, 'select_s')} | {f(o, 'surgery_s')} | "
                   f"{f(o, 'verify_s')} | **{f(o, 'total_s')}** | {f(o, 'api_s')} | {f(t, 'build_s')} | "
                   f"{f(t, 'prune_s')} | **{f(t, 'total_s')}** | {o['params_before']:,} | {o['params_after']:,} | "
                   f"{tp_after} | {o['max_abs_diff']:.1e} |")
    out.append("")
    goals = doc.get("goals")
    if goals:
        out += ["Goals (issue): ResNet-50 end-to-end under 3 s on 2 CPU cores, and no slower than Torch-Pruning.", ""]
        out += [f"- {k}: {v}" for k, v in goals.items()] + [""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="64x64 inputs, 2 repeats")
    ap.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--size", type=int, default=None, help="input size (default 224; --quick: 64)")
    ap.add_argument("--ratio", type=float, default=0.4)
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per model (default 5; --quick: 2)")
    ap.add_argument("--verify-batch", type=int, default=4, help="verification batch (shrink() default: 4)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    ap.add_argument("--no-tp", action="store_true", help="skip Torch-Pruning")
    ap.add_argument("--out", default=None, help="output path prefix (writes PREFIX.json and PREFIX.md)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    size = args.size or (64 if args.quick else 224)
    repeats = args.repeats or (2 if args.quick else 5)
    shape = (3, size, size)
    tp_version = None
    if not args.no_tp:
        try:
            import torch_pruning

            tp_version = getattr(torch_pruning, "__version__", "?")
        except ImportError:
            print("torch-pruning is not installed (pip install torch-pruning); skipping the comparison")
    doc = {"machine": machine(), "quick": args.quick, "input": list(shape), "ratio": args.ratio, "repeats": repeats,
           "verify_batch": args.verify_batch, "torch_pruning": tp_version, "results": []}
    for name in args.models:
        ours_once(name, shape, args.ratio, args.verify_batch)  # warm-up (oneDNN kernels, imports)
        runs = [ours_once(name, shape, args.ratio, args.verify_batch) for _ in range(repeats)]
        api = [ours_api_once(name, shape, args.ratio) for _ in range(repeats)]
        ours = {k: round(median(runs, k), 4) for k in ("graph_s", "select_s", "surgery_s", "verify_s", "total_s")}
        ours.update({k: runs[0][k] for k in ("params_before", "params_after", "groups", "pruned_groups",
                                             "channels_removed")})
        ours["max_abs_diff"] = max(r["max_abs_diff"] for r in runs)
        ours["api_s"] = round(statistics.median(api), 4)
        ours["runs_total_s"] = [round(r["total_s"], 4) for r in runs]
        row = {"model": name, "arch": MODELS[name][0], "prunekit": ours, "torch_pruning": None}
        if tp_version:
            tp_once(name, shape, args.ratio)  # warm-up
            truns = [tp_once(name, shape, args.ratio) for _ in range(repeats)]
            tpr = {k: round(median(truns, k), 4) for k in ("build_s", "prune_s", "total_s")}
            tpr.update({k: truns[0][k] for k in ("params_before", "params_after", "pruned_groups",
                                                 "channels_removed")})
            tpr["runs_total_s"] = [round(r["total_s"], 4) for r in truns]
            row["torch_pruning"] = tpr
        doc["results"].append(row)
        tp_txt = (f" | TP build {tpr['build_s']:.3f} prune {tpr['prune_s']:.3f} total {tpr['total_s']:.3f}, "
                  f"params {tpr['params_after']:,}" if tp_version else "")
        print(f"{name:13s} graph {ours['graph_s']:.3f} select {ours['select_s']:.3f} surgery {ours['surgery_s']:.3f} "
              f"verify {ours['verify_s']:.3f} total {ours['total_s']:.3f} (api {ours['api_s']:.3f}), params "
              f"{ours['params_before']:,} -> {ours['params_after']:,}{tp_txt}", flush=True)
        gc.collect()
    by = {r["model"]: r for r in doc["results"]}
    if "resnet50" in by and size == 224:
        r = by["resnet50"]
        goals = {"ResNet-50 prunekit total (graph+select+surgery+verify)":
                 f"{r['prunekit']['total_s']:.2f} s ({'met' if r['prunekit']['total_s'] < 3 else 'NOT met'}: < 3 s)",
                 "ResNet-50 prunekit api (DependencyGraph + shrink())":
                 f"{r['prunekit']['api_s']:.2f} s ({'met' if r['prunekit']['api_s'] < 3 else 'NOT met'}: < 3 s)"}
        for n, rr in by.items():
            if rr["torch_pruning"]:
                o, b = rr["prunekit"], rr["torch_pruning"]["total_s"]
                a = o["total_s"]
                c = o["graph_s"] + o["select_s"] + o["surgery_s"]
                goals[f"{n} vs Torch-Pruning"] = (f"{a:.2f} s vs {b:.2f} s ({'met' if a <= b else 'NOT met'}); "
                                                  f"without verification (which Torch-Pruning does not do) "
                                                  f"{c:.2f} s vs {b:.2f} s ({'met' if c <= b else 'NOT met'})")
        doc["goals"] = goals
    prefix = Path(args.out) if args.out else ROOT / "results" / ("_work/surgery_bench_quick" if args.quick
                                                                 else "surgery_bench")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    prefix.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    prefix.with_suffix(".md").write_text(markdown(doc))
    print(f"wrote {prefix.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
