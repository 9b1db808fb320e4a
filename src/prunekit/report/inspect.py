"""Inspection of a pruned model: per-group kept/total channels, params and MACs, plus the plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..cost import profile
from ..io import write_json, write_text
from ..pruning import strip
from . import plots


def pruning_table(pruner, dense_profile=None, shrunk_profile=None) -> list[dict[str, Any]]:
    """One row per pruned group: layer, kept/total channels, sparsity, params and MACs of its producers."""
    rows = []
    for g, alive in zip(pruner.groups, pruner.alive().values(), strict=True):
        row: dict[str, Any] = {"layer": g.name, "kept": int(alive.sum()), "total": g.size,
                               "sparsity": 1 - float(alive.mean())}
        for tag, prof in (("before", dense_profile), ("after", shrunk_profile)):
            if prof is not None:
                names = {r.name: r for r in prof.rows}
                prods = [names[p] for p in g.producers if p in names]
                row[f"params_{tag}"] = sum(r.params for r in prods)
                row[f"macs_{tag}"] = sum(r.macs for r in prods)
        rows.append(row)
    return rows


def markdown_table(rows: list[dict[str, Any]], totals: dict[str, Any] | None = None) -> str:
    head = "| layer | kept / total | sparsity | params before | params after | MACs before | MACs after |\n"
    head += "|---|---:|---:|---:|---:|---:|---:|\n"
    body = "".join(
        f"| `{r['layer']}` | {r['kept']} / {r['total']} | {100 * r['sparsity']:.1f}% | "
        f"{r.get('params_before', 0):,} | {r.get('params_after', 0):,} | {r.get('macs_before', 0):,} | "
        f"{r.get('macs_after', 0):,} |\n" for r in rows)
    if totals:
        body += (f"| **model** | | | **{totals['params_before']:,}** | **{totals['params_after']:,}** | "
                 f"**{totals['macs_before']:,}** | **{totals['macs_after']:,}** |\n")
    return head + body


def write_inspection(pruner, out_dir: str | Path, scores_before: dict[int, np.ndarray] | None = None,
                     weights_before: np.ndarray | None = None, metrics: list[dict] | None = None) -> dict[str, Any]:
    """Write summary.md/summary.json and the PNG plots for a masked model into ``out_dir``."""
    out = Path(out_dir)
    dense = profile(strip(pruner.model, copy=True), pruner.input_shape)
    shrunk = profile(pruner.shrink(check=False).model, pruner.input_shape)
    rows = pruning_table(pruner, dense, shrunk)
    totals = {"params_before": dense.params, "params_after": shrunk.params, "macs_before": dense.macs,
              "macs_after": shrunk.macs, "sparsity": pruner.sparsity()}
    write_json(out / "summary.json", {"groups": rows, "totals": totals})
    write_text(out / "summary.md", "# Pruning summary\n\n" + markdown_table(rows, totals))
    plots.kept_channels(rows, out / "kept_channels.png")
    if scores_before is not None:
        panels = [{"name": g.name, "scores": scores_before[g.id], "kept": a}
                  for g, a in zip(pruner.groups, pruner.alive().values(), strict=True)]
        plots.importance_histograms(panels, out / "importance_hist.png")
    if weights_before is not None:
        plots.weight_histogram(weights_before, pruned_weight_magnitudes(pruner), out / "weight_hist.png",
                               "|w| of the pruned layers: before vs kept")
    if metrics:
        plots.sparsity_curve(metrics, out / "sparsity.png")
    return {"rows": rows, "totals": totals}


def pruned_weight_magnitudes(pruner, only_alive: bool = True) -> np.ndarray:
    """|w| of every producer filter in the pruned groups (kept channels only when ``only_alive``)."""
    mods = dict(pruner.model.named_modules())
    keep_elem = pruner.graph.keep_elements(pruner.removed()) if only_alive else None
    sel = {g.id for g in pruner.groups}
    vals = []
    for s in pruner.graph.state.slots:
        if s.kind != "out":
            continue
        comps = pruner.graph.slot_components(s)
        if not any(gid in sel for gid, _, _ in comps):
            continue
        w = mods[s.module].weight.detach().float().cpu()
        rows = torch.arange(w.shape[0])
        if keep_elem is not None:
            rows = torch.as_tensor(np.flatnonzero(keep_elem[s.labels]))
        vals.append(w[rows].abs().flatten().numpy())
    return np.concatenate(vals) if vals else np.zeros(0)
