"""Coverage of the channel dependency graph + surgery: every torchvision classification model, and 50 timm CNNs
side by side with Torch-Pruning.

For each model: build the dependency graph, remove 40% of the channels of every prunable group (random channels,
seeded; BN statistics randomised so the removed channels carry non-zero values), shrink, and verify against the
masked model. Each model ends up as

* ``exact``     -- surgery verified (max abs diff within ``1e-4 + 1e-5 * max|reference|``; the table gives the
  absolute difference, the output scale and their ratio),
* ``rejected``  -- the graph cannot be built (the model's own forward is untraceable by torch.fx), reason recorded,
* ``no-prunable`` -- traced, but every group is locked (reasons recorded),
* ``failed``    -- anything else (a verification failure here would be an engine bug).

``--suite timm`` runs the timm list below at 160x160 and, for each model, Torch-Pruning 1.x in a subprocess with a
timeout (``BasePruner``, magnitude importance, ``pruning_ratio`` 0.4 for every group, the classifier ignored, as
prunekit locks the model output): a crash or a hang is recorded, not fatal. Both pruned models are measured with
the same counter (``prunekit.cost.profile``: parameters, conv + linear MACs). A timm model *meets the bar* when
prunekit prunes it exactly and removes at least 90% of the parameter fraction Torch-Pruning removes (or
Torch-Pruning does not run on it).

Usage::

    python benchmarks/coverage.py            # all 80 torchvision models at 224x224 (~15-20 min on 2 cores)
    python benchmarks/coverage.py --quick    # one model per family at 64x64 (transformers at 224), ~1 min
    python benchmarks/coverage.py --models resnet18 vit_b_16 --size 128
    python benchmarks/coverage.py --threads 1                # on a busy machine (no OpenMP spin-waiting)
    python benchmarks/coverage.py --suite timm --threads 1   # 50 timm CNNs + Torch-Pruning (~25 min on 2 cores)
    python benchmarks/coverage.py --suite timm --models mixnet_s --no-tp

Writes ``benchmarks/results/coverage.{json,md}`` (timm: ``coverage_timm.{json,md}``; ``--quick``:
``benchmarks/results/_work/coverage_quick.*``), with the commit, package versions and machine.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torchvision
from _common import environment, provenance_line
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


# timm CNNs by family: the 28 of issue 18 and more of each of its families (timm.list_models() names)
TIMM_MODELS = {
    "ResNet / ResNet-D / SE / ResNeXt / GN": ["resnet18", "resnet50d", "resnet26t", "seresnet50", "resnext50_32x4d",
                                              "seresnext26d_32x4d", "resnet50_gn", "tresnet_m"],
    "ECA-ResNet": ["ecaresnet50d", "ecaresnet26t", "eca_resnet33ts"],
    "Res2Net / SK / ResNeSt": ["res2net50_26w_4s", "skresnet18", "resnest14d"],
    "EfficientNet": ["efficientnet_b0", "efficientnet_b2", "tf_efficientnet_b0", "efficientnet_lite0",
                     "tf_efficientnet_lite0", "efficientnetv2_rw_s", "tf_efficientnetv2_b0", "efficientnet_es"],
    "MixNet": ["mixnet_s", "mixnet_m", "tf_mixnet_s"],
    "MobileNet / MNAS / FBNet / NAS": ["mobilenetv2_100", "mobilenetv3_large_100", "mobilenetv3_small_100",
                                       "tf_mobilenetv3_large_100", "mobilenetv4_conv_small", "mnasnet_100",
                                       "semnasnet_100", "spnasnet_100", "fbnetc_100", "tinynet_a", "hardcorenas_a",
                                       "lcnet_050", "lcnet_100"],
    "RegNet": ["regnetx_002", "regnety_002", "regnety_008", "regnetz_b16"],
    "ReXNet / GhostNet": ["rexnet_100", "ghostnet_100", "ghostnetv2_100", "repghostnet_100"],
    "CSP": ["cspresnet50", "cspdarknet53", "cspresnext50", "cs3darknet_s"],
    "DPN": ["dpn68", "dpn68b"],
    "RepVGG / MobileOne": ["repvgg_a0", "repvgg_b0", "mobileone_s0", "mobileone_s1"],
    "VoVNet / GENet": ["vovnet39a", "ese_vovnet19b_dw", "gernet_s"],
    "DenseNet / Inception / other": ["densenet121", "inception_v3", "tf_inception_v3", "inception_v4", "dla34",
                                     "selecsls42b", "xception41", "resnetv2_50", "hrnet_w18_small"],
    "MobileViT": ["mobilevit_xxs"],
}
# outside the issue's families, for the record (not counted in the headline): what stays locked, and why
TIMM_EXTRA = {"ConvNeXt": ["convnext_atto"], "BiT / NFNet": ["resnetv2_50x1_bit", "nf_resnet26"]}
TIMM_FAMILY = {n: f for fams in (TIMM_MODELS, TIMM_EXTRA) for f, names in fams.items() for n in names}
TP_BAR = 0.9  # prunekit must remove at least this fraction of the parameter share Torch-Pruning removes


def family(name: str) -> str:
    if name in TIMM_FAMILY:
        return TIMM_FAMILY[name]
    return re.split(r"\d|_", name, maxsplit=1)[0] if not name.startswith("wide_") else "wide_resnet"


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


def out_channels(model: nn.Module, skip: nn.Module | None = None) -> int:
    """Output channels of every conv / linear layer but ``skip`` (the classifier, which no engine prunes)."""
    return sum(m.out_channels if isinstance(m, nn.Conv2d) else m.out_features for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear)) and m is not skip)


def _classifier(model: nn.Module) -> nn.Module | None:
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    return head if isinstance(head, nn.Module) else None


def reason_kind(reason: str) -> str:
    """'reduction over channels at node 'mean_3' (mean)' -> 'reduction over channels (mean)'; module paths
    ('... (features.3.0.block.2)') are dropped so that the same reason counts once per model."""
    reason = re.sub(r" at node '[^']*'", "", reason)
    return re.sub(r" \([\w]+(\.[\w]+)+\)$", "", reason)


def run_one(name: str, size: int, ratio: float, seed: int, batch: int, suite: str = "torchvision") -> dict:
    row: dict = {"model": name, "family": family(name), "transformer": bool(TRANSFORMERS.match(name)),
                 "input": [3, size, size]}
    t0 = time.perf_counter()
    try:
        torch.manual_seed(seed)
        model = create_model(f"{suite}:{name}").eval()
        randomize_bn(model, seed)
    except Exception as e:  # pragma: no cover - torchvision / timm itself
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
    if suite == "timm":
        name_of = {id(m): n for n, m in model.named_modules()}
        head = _classifier(model)
        small_head = res.model.get_submodule(name_of[id(head)]) if head is not None else None
        row["channels_before"], row["channels_after"] = out_channels(model, head), out_channels(res.model, small_head)
    row.update(status="exact", max_abs_diff=res.max_abs_diff, output_scale=scale,
               relative_diff=res.max_abs_diff / scale if scale else 0.0,
               params_before=res.params_before, params_after=res.params_after,
               macs_before=res.macs_before, macs_after=res.macs_after,
               channels_removed=res.channels_removed, seconds=round(time.perf_counter() - t0, 3))
    del res, model, graph
    return row


# --- Torch-Pruning, in a subprocess ---------------------------------------------------------------------


def tp_worker(name: str, size: int, ratio: float, seed: int) -> int:
    """Prune timm ``name`` with Torch-Pruning (the same random weights as prunekit's run); print one JSON line."""
    import warnings

    import torch_pruning as tp

    from prunekit.cost import profile

    warnings.filterwarnings("ignore")
    torch.manual_seed(seed)
    model = create_model(f"timm:{name}").eval()
    randomize_bn(model, seed)
    shape = (3, size, size)
    before = profile(model, shape)
    head = _classifier(model)
    channels_before = out_channels(model, head)
    x = torch.randn(1, *shape)
    t = time.perf_counter()
    ignored = [head] if head is not None and any(True for _ in head.parameters()) else []
    pruner = tp.pruner.BasePruner(model, x, importance=tp.importance.MagnitudeImportance(), pruning_ratio=ratio,
                                  ignored_layers=ignored)
    pruner.step()
    seconds = time.perf_counter() - t
    with torch.no_grad():
        out = model(x)
    after = profile(model, shape)
    print(json.dumps({"status": "ok", "params_before": before.params, "params_after": after.params,
                      "macs_before": before.macs, "macs_after": after.macs, "seconds": round(seconds, 3),
                      "channels_before": channels_before, "channels_after": out_channels(model, head),
                      "output": list(out.shape)}))
    return 0


def run_tp(name: str, size: int, ratio: float, seed: int, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--tp-worker", name, "--size", str(size), "--ratio",
           str(ratio), "--seed", str(seed)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "reason": f"no result after {timeout:.0f} s (hang)", "wall_s": round(timeout, 1)}
    wall = round(time.perf_counter() - t, 1)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode == 0 and lines:
        return {**json.loads(lines[-1]), "wall_s": wall}
    err = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    return {"status": "crashed", "reason": (err[-1] if err else f"exit {proc.returncode}")[:300], "wall_s": wall}


def reduction(r: dict, key: str) -> float | None:
    if r.get(f"{key}_before") and r.get(f"{key}_after") is not None:
        return 1.0 - r[f"{key}_after"] / r[f"{key}_before"]
    return None


def judge(row: dict) -> None:
    """``meets``: exact, with at least TP_BAR of Torch-Pruning's parameter reduction where Torch-Pruning runs."""
    tp = row.get("tp") or {}
    pk_red, tp_red = reduction(row, "params"), reduction(tp, "params") if tp.get("status") == "ok" else None
    row["params_removed"], row["macs_removed"] = pk_red, reduction(row, "macs")
    row["channels_removed_share"] = reduction(row, "channels")
    if tp.get("status") == "ok":
        tp["params_removed"], tp["macs_removed"] = tp_red, reduction(tp, "macs")
        tp["channels_removed_share"] = reduction(tp, "channels")
    row["vs_tp"] = pk_red / tp_red if pk_red is not None and tp_red else None
    row["meets"] = row["status"] == "exact" and (row["vs_tp"] is None or row["vs_tp"] >= TP_BAR)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _diff(r: dict) -> str:
    rel = r.get("relative_diff", r["max_abs_diff"] / r["output_scale"] if r["output_scale"] else 0.0)
    return f"{r['max_abs_diff']:.1e} / {r['output_scale']:.1e} / {rel:.0e}"


def _header(doc: dict, title: str) -> list[str]:
    env = doc["environment"]
    return [f"# {title}", "", f"Generated by `{doc['command']}`, {doc['total_s']:.0f} s on a shared machine "
            f"({env.get('torch_threads')} torch threads).", "", provenance_line(env["provenance"]), ""]


def _abs_summary(rows: list[dict]) -> list[str]:
    ex = [r for r in rows if r["status"] == "exact"]
    within = [r for r in ex if r["max_abs_diff"] <= 1e-4]
    rel_only = [r for r in ex if r["max_abs_diff"] > 1e-4]
    out = [f"- exact models within an absolute 1e-4: **{len(within)}/{len(ex)}**"]
    if rel_only:
        out.append("- exact through the relative term only (float32 round-off of very large outputs): " + ", ".join(
            f"{r['model']} (max abs diff {r['max_abs_diff']:.1e} on outputs up to {r['output_scale']:.1e}, relative "
            f"{r['max_abs_diff'] / r['output_scale']:.0e})" for r in rel_only))
    return out


def markdown(doc: dict) -> str:
    if doc.get("suite") == "timm":
        return markdown_timm(doc)
    rows = doc["results"]
    st = Counter(r["status"] for r in rows)
    cnn = [r for r in rows if not r["transformer"]]
    tr = [r for r in rows if r["transformer"]]
    out = _header(doc, "Dependency-graph coverage over torchvision classification models") + [
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
        *_abs_summary(rows),
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
            "| max abs diff / max abs output / relative | graph s | surgery s | main lock reasons / rejection |",
            "|---|---|---:|---:|---|---|---:|---:|---:|---|"]
    for r in rows:
        name = r["model"] + (" (T)" if r["transformer"] else "")
        if r["status"] == "exact":
            pr = f"{r['prunable']} ({r['prunable_channels']}/{r['channels']})"
            params = f"{r['params_before'] / 1e6:.2f}M -> {r['params_after'] / 1e6:.2f}M"
            macs = f"{r['macs_before'] / 1e9:.2f}G -> {r['macs_after'] / 1e9:.2f}G"
            why = "; ".join(f"{k} x{n}" for k, n in list(r.get("lock_reasons", {}).items())[:2])
            out.append(f"| {name} | exact | {r['groups']} | {pr} | {params} | {macs} | {_diff(r)} | "
                       f"{r['graph_s']:.2f} | {r['surgery_s']:.2f} | {why} |")
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
            "difference is float32 round-off relative to that scale (see the relative column).", ""]
    return "\n".join(out)


def _timm_summary(rows: list[dict]) -> list[str]:
    n = len(rows)
    st = Counter(r["status"] for r in rows)
    tp_st = Counter((r.get("tp") or {}).get("status", "not run") for r in rows)
    meets = [r for r in rows if r.get("meets")]
    both = [r for r in rows if r["status"] == "exact" and (r.get("tp") or {}).get("status") == "ok"]
    out = [f"- models: **{n}** in {len({r['family'] for r in rows})} families",
           f"- prunekit exact: **{st['exact']}/{n}**; no prunable group: {st['no-prunable']}; rejected: "
           f"{st['rejected']}; failed (error or verification): **{st['failed']}**",
           *_abs_summary(rows),
           f"- meeting the bar: **{len(meets)}/{n}** ({100 * len(meets) / max(1, n):.0f}%)",
           "- Torch-Pruning: " + ", ".join(f"{k} {v}" for k, v in tp_st.most_common())]
    if both:
        ratios = sorted(r["vs_tp"] for r in both)
        out.append(f"- where both run ({len(both)} models): prunekit removes {np.median(ratios):.2f}x Torch-Pruning's "
                   f"parameter share (median; min {ratios[0]:.2f}, max {ratios[-1]:.2f})")
    return out


def _below(rows: list[dict]) -> list[str]:
    out = []
    for r in rows:
        if r.get("meets"):
            continue
        tp = r.get("tp") or {}
        if r["status"] == "exact":
            what = (f"exact, {_pct(r.get('params_removed'))} of the parameters removed vs Torch-Pruning's "
                    f"{_pct(tp.get('params_removed'))} (conv/linear output channels removed: prunekit "
                    f"{_pct(r.get('channels_removed_share'))}, Torch-Pruning {_pct(tp.get('channels_removed_share'))})")
        else:
            what = r["status"]
        why = "; ".join(f"{k} x{c}" for k, c in list(r.get("lock_reasons", {}).items())[:2])
        if r["status"] != "exact":
            why = _short(r.get("reason", "")) + (": " + why if why else "")
        out.append(f"- **{r['model']}**: {what}." + (f" Locked: {why}" if why else " Nothing locked."))
    return out


def _timm_table(rows: list[dict]) -> list[str]:
    out = ["| family | model | prunekit | params removed | MACs removed | channels removed | max abs diff / max abs "
           "output / relative | s | Torch-Pruning | params removed | MACs removed | channels removed | s | "
           "prunekit / TP params | bar | lock reasons (prunekit) / Torch-Pruning failure |",
           "|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        tp = r.get("tp") or {}
        ok = r["status"] == "exact"
        diff = _diff(r) if ok else ""
        secs = f"{r['seconds']:.1f}" if ok else ""
        tps = tp.get("status", "not run")
        tsecs = f"{tp['seconds']:.1f}" if tps == "ok" else (f"{tp['wall_s']:.0f} (wall)" if "wall_s" in tp else "")
        vs = f"{r['vs_tp']:.2f}" if r.get("vs_tp") is not None else "-"
        why = "; ".join(f"{k} x{c}" for k, c in list(r.get("lock_reasons", {}).items())[:2])
        if not ok:
            why = _short(r.get("reason", "")) + (": " + why if why else "")
        if tps not in ("ok", "not run"):
            why += ("; " if why else "") + "TP: " + _short(tp.get("reason", ""))[:120]
        out.append(f"| {r['family']} | {r['model']} | {r['status']} | {_pct(r.get('params_removed'))} | "
                   f"{_pct(r.get('macs_removed'))} | {_pct(r.get('channels_removed_share'))} | {diff} | {secs} | "
                   f"{tps} | {_pct(tp.get('params_removed'))} | {_pct(tp.get('macs_removed'))} | "
                   f"{_pct(tp.get('channels_removed_share'))} | {tsecs} | {vs} | "
                   f"{'yes' if r.get('meets') else '**no**'} | {why} |")
    return out


def markdown_timm(doc: dict) -> str:
    rows = [r for r in doc["results"] if not r.get("extra")]
    extra = [r for r in doc["results"] if r.get("extra")]
    out = _header(doc, "timm CNNs: prunekit vs Torch-Pruning") + [
        f"Each model: `timm.create_model(NAME)` with random weights and randomised BatchNorm statistics (seed "
        f"{doc['seed']}), input {doc['input_note']}, {int(doc['ratio'] * 100)}% of the channels of every group. "
        "prunekit: `select('all')`, random channels, surgery verified against the masked model (tolerance "
        "`1e-4 + 1e-5 * max|reference|`; the table gives the absolute difference, the output scale and their "
        "ratio). Torch-Pruning: `BasePruner` with `MagnitudeImportance()`, `pruning_ratio` "
        f"{doc['ratio']}, classifier ignored, in a subprocess with a {doc['tp_timeout']:.0f} s timeout (it "
        "verifies nothing). Parameters and MACs (conv + linear) of both pruned models come from the same counter "
        "(`prunekit.cost.profile`); *channels removed* is the share of conv/linear output channels removed (the "
        "classifier left out): 40% asked, more means the engine removed more than asked somewhere. Times: "
        "prunekit = graph + surgery + verification; Torch-Pruning = pruner construction + `step()` (the "
        "subprocess's start-up and timm import not counted). "
        f"**Meets the bar**: exact, and at least {int(TP_BAR * 100)}% of the parameter reduction Torch-Pruning "
        "reaches on the same model where it runs.",
        "",
        "## Summary (the issue's families)",
        "",
        *_timm_summary(rows),
        f"- total time (all {len(doc['results'])} models, both engines): {doc['total_s']:.0f} s",
        "",
    ]
    below = _below(rows)
    if below:
        out += ["Below the bar:", "", *below, ""]
    out += ["## Per model", "", *_timm_table(rows), ""]
    if extra:
        out += ["## Outside the issue's families (not in the summary above)", "", *_timm_summary(extra), "",
                *_below(extra), "", *_timm_table(extra), ""]
    out += ["Lock reasons are counted per group (network input and model output left out). Torch-Pruning's "
            "pruned models are not verified by Torch-Pruning; its figures say how much it removes, not whether the "
            "result computes what the masked model computes.", ""]
    return "\n".join(out)


def _short(reason: str) -> str:
    reason = reason.replace("|", "/").splitlines()[0] if reason else ""
    return reason if len(reason) <= 160 else reason[:157] + "..."


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", choices=["torchvision", "timm"], default="torchvision", help="which models")
    ap.add_argument("--quick", action="store_true", help="torchvision: one model per family, 64x64 (transformers 224)")
    ap.add_argument("--models", nargs="*", help="only these model names")
    ap.add_argument("--skip", nargs="*", default=[], help="skip these model names")
    ap.add_argument("--size", type=int, default=None, help="input size (default 224, timm 160; --quick: 64)")
    ap.add_argument("--ratio", type=float, default=0.4, help="fraction of each prunable group removed")
    ap.add_argument("--batch", type=int, default=1, help="verification batch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    ap.add_argument("--no-tp", dest="tp", action="store_false", help="timm: skip Torch-Pruning")
    ap.add_argument("--tp-timeout", type=float, default=180.0, help="timm: seconds before a Torch-Pruning run counts "
                    "as hung")
    ap.add_argument("--out", default=None, help="output path prefix (writes PREFIX.json and PREFIX.md)")
    ap.add_argument("--render", metavar="JSON", help="only re-render the markdown of an earlier run's JSON")
    ap.add_argument("--tp-worker", metavar="NAME", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.tp_worker:
        torch.set_num_threads(1)
        return tp_worker(args.tp_worker, args.size or 160, args.ratio, args.seed)
    if args.render:
        src = Path(args.render)
        src.with_suffix(".md").write_text(markdown(json.loads(src.read_text())))
        print(f"wrote {src.with_suffix('.md')}")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    timm_suite = args.suite == "timm"
    if timm_suite:
        names = [n for fams in (TIMM_MODELS, TIMM_EXTRA) for ns in fams.values() for n in ns]
    else:
        names = sorted(torchvision.models.list_models(module=torchvision.models))
        if args.quick:
            names = [n for n in QUICK if n in names]
    if args.models:
        unknown = sorted(set(args.models) - set(names)) if not timm_suite else []
        if unknown:
            ap.error(f"unknown model(s): {', '.join(unknown)}")
        names = [n for n in names if n in args.models] + [n for n in args.models if n not in names]
    names = [n for n in names if n not in set(args.skip)]
    size = args.size or (160 if timm_suite else 64 if args.quick else 224)
    default = "coverage_timm" if timm_suite else ("_work/coverage_quick" if args.quick else "coverage")
    prefix = Path(args.out) if args.out else ROOT / "results" / default
    prefix.parent.mkdir(parents=True, exist_ok=True)
    env = environment(torch.device("cpu"))
    rows, t0 = [], time.perf_counter()
    for i, name in enumerate(names):
        s = size if timm_suite else 224 if FIXED_224.match(name) else max(size, MIN_SIZE.get(name, 1))
        row = run_one(name, s, args.ratio, args.seed, args.batch, args.suite)
        if timm_suite:
            row["tp"] = run_tp(name, s, args.ratio, args.seed, args.tp_timeout) if args.tp else {"status": "not run"}
            row["extra"] = name in {n for ns in TIMM_EXTRA.values() for n in ns}
            judge(row)
        rows.append(row)
        gc.collect()
        extra = (f"diff {row['max_abs_diff']:.1e}, params {row['params_before'] / 1e6:.1f}M -> "
                 f"{row['params_after'] / 1e6:.1f}M, {row['seconds']:.1f}s" if row["status"] == "exact"
                 else _short(row.get("reason", ""))[:120])
        if timm_suite:
            tp = row["tp"]
            extra += (f" | TP {tp['status']}" + (f" {_pct(tp.get('params_removed'))}" if tp["status"] == "ok" else "")
                      + f" | pk {_pct(row.get('params_removed'))} meets={row['meets']}")
        print(f"[{i + 1}/{len(names)}] {name:22s} {row['status']:11s} {extra}", flush=True)
    if timm_suite:
        note = f"{size}x{size}"
    else:
        exceptions = (["ViT/MaxViT at 224x224"] if size != 224 else []) + (
            ["inception_v3 at 299x299"] if size < 299 else [])
        note = f"{size}x{size}" + (f" ({', '.join(exceptions)})" if exceptions else "")
    doc = {"suite": args.suite, "command": "python benchmarks/coverage.py " + " ".join(argv or sys.argv[1:]),
           "environment": env, "quick": args.quick, "input_note": note, "ratio": args.ratio, "seed": args.seed,
           "batch": args.batch, "tp_timeout": args.tp_timeout, "total_s": round(time.perf_counter() - t0, 1),
           "results": rows}
    prefix.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    prefix.with_suffix(".md").write_text(markdown(doc))
    st = Counter(r["status"] for r in rows)
    print(f"{len(rows)} models: " + ", ".join(f"{k} {v}" for k, v in st.most_common()) +
          (f"; meeting the bar {sum(bool(r.get('meets')) for r in rows)}" if timm_suite else "") +
          f"; wrote {prefix.with_suffix('.md')}")
    return 0 if st["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
