"""Coverage of the channel dependency graph + surgery over every torchvision classification model.

For each model (CNNs and, reported as such, the vision transformers): build the dependency graph, remove 40%
of the channels of every prunable group (random channels, seeded; BN statistics randomised so the removed
channels carry non-zero values), shrink, and verify against the masked model. Each model ends up as

* ``exact``     -- surgery verified (max abs diff within ``1e-4 + 1e-5 * max|reference|``),
* ``rejected``  -- the graph cannot be built (untraceable by torch.fx), reason recorded,
* ``no-prunable`` -- traced, but every group is locked (reasons recorded),
* ``failed``    -- anything else (a verification failure here would be an engine bug).

Usage::

    python benchmarks/coverage.py            # all 80 models at 224x224 (~15-20 min on 2 cores)
    python benchmarks/coverage.py --quick    # one model per family at 64x64 (transformers at 224), ~1 min
    python benchmarks/coverage.py --models resnet18 vit_b_16 --size 128
    python benchmarks/coverage.py --threads 1                # on a busy machine (no OpenMP spin-waiting)

Writes ``benchmarks/results/coverage.{json,md}`` (``--quick``: ``benchmarks/results/_work/coverage_quick.*``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import sys
import time
import traceback
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn

from prunekit.errors import PrunekitError, VerificationError
from prunekit.graph import DependencyGraph
from prunekit.models import create_model
from prunekit.surgery import example_inputs, shrink

ROOT = Path(__file__).resolve().parent
TRANSFORMERS = re.compile(r"^(vit_|swin_|maxvit_)")
FIXED_224 = re.compile(r"^(vit_|maxvit_)")  # position embeddings / window partitions fixed to 224
# inception_v3's auxiliary head (analysed in train mode) needs a large input; below ~150 px the train-mode
# forward fails, which rejects the whole model, so it runs at its native 299 when the requested size is smaller.
MIN_SIZE = {"inception_v3": 299}
QUICK = ["alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "efficientnet_v2_s", "googlenet",
         "inception_v3", "mnasnet0_5", "mobilenet_v2", "mobilenet_v3_small", "regnet_x_400mf", "regnet_y_400mf",
         "resnet18", "resnext50_32x4d", "shufflenet_v2_x0_5", "squeezenet1_1", "vgg11_bn", "wide_resnet50_2",
         "swin_t", "vit_b_32", "maxvit_t"]


def family(name: str) -> str:
    return re.split(r"\d|_", name, maxsplit=1)[0] if not name.startswith("wide_") else "wide_resnet"


def machine() -> dict:
    from prunekit.inference.bench import cpu_model

    cpu = cpu_model()
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "torchvision": torchvision.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def randomize_bn(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
                if m.affine:
                    m.weight.copy_(torch.randn(c, generator=g) * 0.1 + 1.0)
                    m.bias.copy_(torch.randn(c, generator=g) * 0.1)


def reason_kind(reason: str) -> str:
    """'reduction over channels at node 'mean_3' (mean)' -> 'reduction over channels (mean)'; module paths
    ('... (features.3.0.block.2)') are dropped so that the same reason counts once per model."""
    reason = re.sub(r" at node '[^']*'", "", reason)
    return re.sub(r" \([\w]+(\.[\w]+)+\)$", "", reason)


def run_one(name: str, size: int, ratio: float, seed: int, batch: int) -> dict:
    row: dict = {"model": name, "family": family(name), "transformer": bool(TRANSFORMERS.match(name)),
                 "input": [3, size, size]}
    t0 = time.perf_counter()
    try:
        torch.manual_seed(seed)
        model = create_model(f"torchvision:{name}").eval()
        randomize_bn(model, seed)
    except Exception as e:  # pragma: no cover - torchvision itself
        row.update(status="failed", reason=f"build: {type(e).__name__}: {e}")
        return row
    shape = (3, size, size)
    try:
        t = time.perf_counter()
        graph = DependencyGraph(model, shape)
        row["graph_s"] = round(time.perf_counter() - t, 3)
    except PrunekitError as e:
        row.update(status="rejected", reason=str(e), graph_s=round(time.perf_counter() - t, 3))
        return row
    except Exception as e:
        row.update(status="failed", reason=f"graph: {type(e).__name__}: {e}", trace=traceback.format_exc(limit=3))
        return row
    groups = graph.groups
    prunable = [g for g in groups if g.prunable]
    locks = Counter(reason_kind(g.locked) for g in groups if g.locked and g.locked not in
                    ("network input", "model output"))
    total_ch = sum(g.size for g in groups if g.producers)
    row.update(groups=len(groups), prunable=len(prunable),
               prunable_channels=sum(g.size for g in prunable), channels=total_ch,
               lock_reasons=dict(locks.most_common()))
    if not prunable:
        row.update(status="no-prunable", reason="every channel group is locked")
        return row
    rng = np.random.default_rng(seed)
    removed = {}
    for g in prunable:
        k = min(g.size - 1, max(1, int(round(ratio * g.size))))
        removed[g.name] = sorted(rng.choice(g.size, k, replace=False).tolist())
    x = example_inputs(shape, batch=batch, seed=seed)
    try:
        t = time.perf_counter()
        res = shrink(model, shape, removed, graph=graph, inputs=x)
        row["surgery_s"] = round(time.perf_counter() - t, 3)
    except VerificationError as e:
        row.update(status="failed", reason=f"verification: {e}")
        return row
    except Exception as e:
        row.update(status="failed", reason=f"surgery: {type(e).__name__}: {e}",
                   trace=traceback.format_exc(limit=4))
        return row
    with torch.no_grad():
        scale = float(res.model(x).abs().max())
    row.update(status="exact", max_abs_diff=res.max_abs_diff, output_scale=scale,
               params_before=res.params_before, params_after=res.params_after,
               macs_before=res.macs_before, macs_after=res.macs_after,
               channels_removed=res.channels_removed, seconds=round(time.perf_counter() - t0, 3))
    del res, model, graph
    return row


def markdown(doc: dict) -> str:
    rows, m = doc["results"], doc["machine"]
    st = Counter(r["status"] for r in rows)
    cnn = [r for r in rows if not r["transformer"]]
    tr = [r for r in rows if r["transformer"]]
    out = [
        "# Dependency-graph coverage over torchvision classification models",
        "",
        f"Generated by `benchmarks/coverage.py{' --quick' if doc['quick'] else ''}` on {m['date']}: "
        f"{m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), torch {m['torch']}, "
        f"torchvision {m['torchvision']}, Python {m['python']}.",
        "",
        f"Each model: random weights with randomised BatchNorm statistics, input {doc['input_note']}, "
        f"{int(doc['ratio'] * 100)}% of the channels of **every prunable group** removed (random channels, seed "
        f"{doc['seed']}), surgery verified against the masked model on a batch of {doc['batch']} "
        f"(tolerance `1e-4 + 1e-5 * max|reference|`). Timings include other workers' load on a shared machine.",
        "",
        "## Summary",
        "",
        f"- models: **{len(rows)}** ({len(cnn)} CNNs, {len(tr)} vision transformers)",
        f"- exact: **{st['exact']}** (CNNs: {sum(r['status'] == 'exact' for r in cnn)}/{len(cnn)}, "
        f"transformers: {sum(r['status'] == 'exact' for r in tr)}/{len(tr)})",
        f"- rejected (not traceable by torch.fx): **{st['rejected']}**",
        f"- traced but nothing prunable: **{st['no-prunable']}**",
        f"- failed (verification or error): **{st['failed']}**",
        f"- total time: {doc['total_s']:.0f} s",
        "",
    ]
    reasons = Counter()
    for r in rows:
        if r["status"] in ("rejected", "failed"):
            reasons[_short(r["reason"])] += 1
    if reasons:
        out += ["Rejections / failures:", ""] + [f"- {n} x {k}" for k, n in reasons.most_common()] + [""]
    locks = Counter()
    for r in rows:
        for k in r.get("lock_reasons", {}):
            locks[k] += 1
    if locks:
        out += ["Why some groups stay locked (number of models where the reason occurs):", ""]
        out += [f"- {n} x {k}" for k, n in locks.most_common(12)] + [""]
    out += ["## Per model", "",
            "| model | status | groups | prunable (channels) | params before -> after | MACs before -> after "
            "| max abs diff / max abs output | graph s | surgery s | main lock reasons / rejection |",
            "|---|---|---:|---:|---|---|---:|---:|---:|---|"]
    for r in rows:
        name = r["model"] + (" (T)" if r["transformer"] else "")
        if r["status"] == "exact":
            pr = f"{r['prunable']} ({r['prunable_channels']}/{r['channels']})"
            params = f"{r['params_before'] / 1e6:.2f}M -> {r['params_after'] / 1e6:.2f}M"
            macs = f"{r['macs_before'] / 1e9:.2f}G -> {r['macs_after'] / 1e9:.2f}G"
            diff = f"{r['max_abs_diff']:.1e} / {r['output_scale']:.1e}"
            why = "; ".join(f"{k} x{n}" for k, n in list(r.get("lock_reasons", {}).items())[:2])
            out.append(f"| {name} | exact | {r['groups']} | {pr} | {params} | {macs} | {diff} | {r['graph_s']:.2f} "
                       f"| {r['surgery_s']:.2f} | {why} |")
        else:
            g = r.get("groups", "")
            pr = f"{r['prunable']}" if "prunable" in r else ""
            why = _short(r.get("reason", ""))
            if r.get("lock_reasons"):
                why += ": " + "; ".join(f"{k} x{n}" for k, n in list(r["lock_reasons"].items())[:2])
            gs = f"{r['graph_s']:.2f}" if "graph_s" in r else ""
            out.append(f"| {name} | {r['status']} | {g} | {pr} | | | | {gs} | | {why} |")
    out += ["", "(T) = vision transformer. Channel counts are over groups with a producing layer. Some untrained "
            "deep nets (e.g. inception_v3 with torchvision's init) produce logits of 1e6 and more; their absolute "
            "difference is float32 round-off relative to that scale.", ""]
    return "\n".join(out)


def _short(reason: str) -> str:
    reason = reason.replace("|", "/").splitlines()[0] if reason else ""
    return reason if len(reason) <= 160 else reason[:157] + "..."


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one model per family, 64x64 (transformers 224)")
    ap.add_argument("--models", nargs="*", help="only these torchvision model names")
    ap.add_argument("--skip", nargs="*", default=[], help="skip these model names")
    ap.add_argument("--size", type=int, default=None, help="input size (default 224; --quick: 64)")
    ap.add_argument("--ratio", type=float, default=0.4, help="fraction of each prunable group removed")
    ap.add_argument("--batch", type=int, default=1, help="verification batch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    ap.add_argument("--out", default=None, help="output path prefix (writes PREFIX.json and PREFIX.md)")
    ap.add_argument("--render", metavar="JSON", help="only re-render the markdown of an earlier run's JSON")
    args = ap.parse_args(argv)
    if args.render:
        src = Path(args.render)
        src.with_suffix(".md").write_text(markdown(json.loads(src.read_text())))
        print(f"wrote {src.with_suffix('.md')}")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    names = sorted(torchvision.models.list_models(module=torchvision.models))
    if args.quick:
        names = [n for n in QUICK if n in names]
    if args.models:
        unknown = sorted(set(args.models) - set(names))
        if unknown:
            ap.error(f"unknown model(s): {', '.join(unknown)}")
        names = [n for n in names if n in args.models]
    names = [n for n in names if n not in set(args.skip)]
    size = args.size or (64 if args.quick else 224)
    prefix = Path(args.out) if args.out else ROOT / "results" / ("_work/coverage_quick" if args.quick else "coverage")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    rows, t0 = [], time.perf_counter()
    for i, name in enumerate(names):
        s = 224 if FIXED_224.match(name) else max(size, MIN_SIZE.get(name, 1))
        row = run_one(name, s, args.ratio, args.seed, args.batch)
        rows.append(row)
        gc.collect()
        extra = (f"diff {row['max_abs_diff']:.1e}, params {row['params_before'] / 1e6:.1f}M -> "
                 f"{row['params_after'] / 1e6:.1f}M, {row['seconds']:.1f}s" if row["status"] == "exact"
                 else _short(row.get("reason", ""))[:120])
        print(f"[{i + 1}/{len(names)}] {name:22s} {row['status']:11s} {extra}", flush=True)
    exceptions = (["ViT/MaxViT at 224x224"] if size != 224 else []) + (["inception_v3 at 299x299"] if size < 299
                                                                      else [])
    note = f"{size}x{size}" + (f" ({', '.join(exceptions)})" if exceptions else "")
    doc = {"machine": machine(), "quick": args.quick, "input_note": note, "ratio": args.ratio, "seed": args.seed,
           "batch": args.batch, "total_s": round(time.perf_counter() - t0, 1), "results": rows}
    prefix.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    prefix.with_suffix(".md").write_text(markdown(doc))
    st = Counter(r["status"] for r in rows)
    print(f"{len(rows)} models: " + ", ".join(f"{k} {v}" for k, v in st.most_common()) +
          f"; wrote {prefix.with_suffix('.md')}")
    return 0 if st["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
