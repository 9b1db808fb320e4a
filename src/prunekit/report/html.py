"""The pipeline report: ``report.md``, a self-contained ``report.html`` (plots inlined) and ``report.json``.

Latency is given per runtime (``stages.<stage>.latency`` = ``{"pytorch": ms, "onnxruntime-fp32": ms,
"onnxruntime-int8": ms}``, null where a stage has no such form or timing is off) and speed-ups only within one
runtime (``stages.<stage>.speedup[runtime]`` = dense / stage). ``deploy`` = ``{choice, reason, path,
latency_ms, ...}`` names the file to ship and why; ``latency_ms`` is kept for that deploy artifact only (in
``deploy`` and on its stage).
"""

from __future__ import annotations

import base64
import html
import json
import platform
import time
from pathlib import Path
from typing import Any

from .._version import __version__
from ..io import atomic_write, read_json, write_json, write_text
from . import plots
from .summary import human

SCHEMA = "prunekit-report/1"


def _read(path: Path) -> Any:
    return read_json(path) if path.is_file() else None


def _metrics(path: Path) -> list[dict]:
    from ..train import read_metrics

    return read_metrics(path) if path.is_file() else []


def collect(p) -> dict[str, Any]:
    """Gather every stage's results into the report.json document."""
    r = p.results
    ev = (r.get("evaluate") or {}).get("stages", {})
    surg = r.get("surgery") or {}
    pred = r.get("predict") or {}
    dense = ev.get("dense", {})
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "prunekit_version": __version__,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "device": str(p.ctx.device)},
        "config": p.cfg.to_dict(),
        "stages": {k: ev[k] for k in ("dense", "pruned", "finetuned", "int8") if k in ev},
        "deploy": (r.get("evaluate") or {}).get("deploy") or (r.get("quantize") or {}).get("deploy") or {},
        "latency_load_avg": (r.get("evaluate") or {}).get("load_avg"),
        "surgery": {"max_abs_diff": surg.get("max_abs_diff"), "params_before": surg.get("params_before"),
                    "params_after": surg.get("params_after"), "macs_before": surg.get("macs_before"),
                    "macs_after": surg.get("macs_after"), "channels_removed": surg.get("channels_removed")},
        "prune": {"sparsity": (r.get("prune") or {}).get("sparsity"),
                  "groups": (_read(p.stage_dir("prune") / "summary.json") or {}).get("groups", [])},
        "predict": {"image": pred.get("image"), "label": pred.get("label"), "top5": pred.get("top5"),
                    "pytorch": pred.get("pytorch"), "onnx": pred.get("onnx"), "int8": pred.get("int8")},
        "budget": _budget_summary((r.get("prune") or {}).get("budget")),
        "export": r.get("export"),
        "quantize": {**{k: v for k, v in (r.get("quantize") or {}).items() if not isinstance(v, (dict, list))},
                     **{k: (r.get("quantize") or {}).get(k) for k in ("settings", "weights", "guard", "mixed",
                                                                       "latency")
                        if (r.get("quantize") or {}).get(k) is not None}},
        "seconds": {k: v.get("seconds") for k, v in r.items() if isinstance(v, dict) and "seconds" in v},
    }
    if dense:
        base = dense.get("latency") or {}
        for s in doc["stages"].values():
            s["params_ratio"] = s["params"] / dense["params"] if dense.get("params") else None
            s["size_ratio"] = s["size_bytes"] / dense["size_bytes"] if dense.get("size_bytes") else None
            lat = s.get("latency") or {}
            s["speedup"] = {rt: base[rt] / ms for rt, ms in lat.items() if ms and base.get(rt)}  # same runtime only
    return doc


def _budget_summary(b: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the report says of a budgeted prune stage (the candidate list stays in stages/prune/budget.json)."""
    if not b:
        return None
    keys = ("budget", "runtime", "dense_cost", "target", "predicted", "measured", "met", "allowance", "seconds", "used")
    return {**{k: b.get(k) for k in keys}, "allocation": b.get("allocation"), "uniform": b.get("uniform"),
            "ranked": b.get("ranked"), "candidates": len(b.get("candidates") or [])}


def _plots(p, doc: dict[str, Any], assets: Path) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    prune_dir = p.stage_dir("prune")
    m = _metrics(prune_dir / "metrics.jsonl")
    if m:
        out["sparsity"] = plots.sparsity_curve(m, assets / "sparsity.png")
    groups = doc["prune"]["groups"]
    if groups:
        out["kept_channels"] = plots.kept_channels(groups, assets / "kept_channels.png")
    for name in ("weight_hist", "importance_hist", "sensitivity", "allocation"):
        f = prune_dir / f"{name}.png"
        if f.is_file():
            out[name] = f.read_bytes()
            with atomic_write(assets / f"{name}.png", "wb") as fh:
                fh.write(out[name])
    pts = [{"label": k, "macs": v["macs"], "top1": v["top1"]} for k, v in doc["stages"].items()
           if v.get("macs") is not None and v.get("top1") is not None]
    if pts:
        out["accuracy_vs_macs"] = plots.accuracy_vs_macs(pts, assets / "accuracy_vs_macs.png", "top-1 vs MACs by stage")
    return out


RUNTIME_COLUMNS = (("pytorch", "PyTorch"), ("onnxruntime-fp32", "ORT fp32"), ("onnxruntime-int8", "ORT int8"))


def _ms(v: float) -> str:
    return f"{v:.3f} ms" if v < 1 else f"{v:.2f} ms"


def summary_rows(doc: dict[str, Any]) -> list[list[str]]:
    """The stage table: batch-1 latency in one column per runtime, "(N.NNx)" = speed-up vs dense in that column."""
    rows = [["stage", "top-1", "top-5", "params", "MACs", "size",
             *(f"{label} b=1" for _, label in RUNTIME_COLUMNS), "deploy"]]
    deployed = (doc.get("deploy") or {}).get("stage")
    for k, s in doc["stages"].items():
        lat, up = s.get("latency") or {}, s.get("speedup") or {}
        cells = []
        for rt, _ in RUNTIME_COLUMNS:
            ms = lat.get(rt)
            cells.append("-" if not ms else _ms(ms) + (f" ({up[rt]:.2f}x)" if k != "dense" and up.get(rt) else ""))
        rows.append([k, f"{s['top1']:.2f}%", f"{s['top5']:.2f}%", human(s["params"]), human(s["macs"]),
                     human(s["size_bytes"], "B"), *cells, "yes" if k == deployed else ""])
    return rows


def deploy_line(doc: dict[str, Any]) -> str | None:
    """Which file to ship and why (the reason is built from this run's measurements)."""
    d = doc.get("deploy") or {}
    if not d.get("choice"):
        return None
    where = f" ({Path(str(d['path'])).name})" if d.get("path") else ""
    return f"Deploy: {d['choice']}{where}. {d.get('reason', '')}".rstrip()


def text_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _md_table(rows: list[list[str]]) -> str:
    out = "| " + " | ".join(rows[0]) + " |\n|" + "---|" * len(rows[0]) + "\n"
    return out + "".join("| " + " | ".join(r) + " |\n" for r in rows[1:])


def _headline(doc: dict[str, Any]) -> list[str]:
    st = doc["stages"]
    lines = []
    if "dense" in st and "finetuned" in st:
        d, f = st["dense"], st["finetuned"]
        lines.append(f"Pruning removed {100 * (1 - f['params'] / d['params']):.1f}% of the parameters and "
                     f"{100 * (1 - f['macs'] / d['macs']):.1f}% of the MACs; top-1 {d['top1']:.2f}% -> "
                     f"{f['top1']:.2f}% after fine-tuning.")
    if "dense" in st and "int8" in st:
        d, q = st["dense"], st["int8"]
        lines.append(f"The int8 model is {d['size_bytes'] / q['size_bytes']:.1f}x smaller than the dense fp32 model "
                     f"(top-1 {q['top1']:.2f}%).")
    lat = _latency_line(st, doc.get("latency_load_avg"))
    if lat:
        lines.append(lat)
    b = doc.get("budget")
    if b:
        used = b.get("used", "searched")
        c = b["allocation"].get("confirm")
        a = b["allocation"].get("rejected_score") or b["allocation"]["score"] or {}
        u = b["uniform"]["score"] or {}
        r = (b.get("ranked") or {}).get("score") or {}
        nan = float("nan")
        head = (f"Budget {b['budget']}: target {b['target']:.4g}, predicted {b['predicted']:.4g}, measured "
                f"{b['measured']:.4g} after pruning: {'met' if b['met'] else 'NOT met'}. ")
        if used == "searched":
            lines.append(head + f"The search's best allocation scored {a.get('top1', nan):.2f}% top-1 before training "
                         f"(adaptive BN, held-out training images) where uniform pruning to the same budget scored "
                         f"{u.get('top1', nan):.2f}%"
                         + (f"; on {c['images']} fresh held-out images {c['searched_top1']:.2f}% vs "
                            f"{c['uniform_top1']:.2f}% ({c['diff']:+.2f} +- {c['se']:.2f} paired), "
                            + ("confirmed" if c["kept"] == "searched" else
                               "not 2 standard errors better, so the plan kept uniform's allocation") if c else "")
                         + "; the searched allocation was pruned to.")
        else:
            lines.append(head + f"The {used} allocation was pruned to"
                         + (" (no search: channels ranked across layers per unit of the budget they save)"
                            if used == "ranked" else "")
                         + f"; before training (adaptive BN, held-out training images) it scored "
                         f"{(r if used == 'ranked' else u).get('top1', nan):.2f}% top-1"
                         + (f", uniform pruning to the same budget {u.get('top1', nan):.2f}%" if used == "ranked"
                            else "") + ".")
    q = doc.get("quantize") or {}
    if q.get("settings"):
        guard = (q.get("guard") or {}).get("summary")
        mixed, weights = q.get("mixed") or {}, q.get("weights") or {}
        lines.append(f"int8 settings: {q['settings'].get('label')} QDQ, for {q['settings'].get('reason')}"
                     + (f"; {weights['summary']}" if weights.get("drop_8bit") is not None else "")
                     + (f"; {guard}" if guard else "")
                     + (f"; {mixed['summary']}" if mixed.get("summary") and mixed.get("tried", [])[1:] else "")
                     + ".")
    dep = deploy_line(doc)
    if dep:
        lines.append(dep)
    if doc["surgery"].get("max_abs_diff") is not None:
        lines.append(f"Surgery verified: the shrunk model reproduces the masked model to "
                     f"{doc['surgery']['max_abs_diff']:.1e} (max abs diff, fp32).")
    return lines


def _latency_line(st: dict[str, Any], load: list | None = None) -> str | None:
    """Batch-1 latencies grouped by runtime, speed-ups only within one runtime."""
    parts = []
    for rt, label in (("pytorch", "PyTorch eager"), ("onnxruntime-fp32", "ONNX Runtime fp32"),
                      ("onnxruntime-int8", "ONNX Runtime int8")):
        cells = []
        for k, s in st.items():
            ms = (s.get("latency") or {}).get(rt)
            if ms:
                up = (s.get("speedup") or {}).get(rt)
                cells.append(f"{k} {_ms(ms)}" + (f" ({up:.2f}x vs dense)" if up and k != "dense" else ""))
        if cells:
            parts.append(f"{label}: {', '.join(cells)}")
    if not parts:
        return None
    where = f" (load average {load[0]:.2f})" if load else ""
    return f"Batch-1 latency on this machine's CPU{where}. {'; '.join(parts)}. Speed-ups compare within one runtime."


def write_report(p, out: Path) -> dict[str, Path]:
    doc = collect(p)
    assets = out / "report_assets"
    imgs = _plots(p, doc, assets)
    rows = summary_rows(doc)
    captions = {"sparsity": "Sparsity and test accuracy during pruning", "kept_channels": "Kept / total channels "
                "per pruned layer", "weight_hist": "Weight magnitudes before vs after pruning", "importance_hist":
                "Channel importance per layer (grey: all channels before pruning, blue: kept)",
                "accuracy_vs_macs": "Top-1 vs MACs across stages",
                "sensitivity": "Sensitivity: top-1 with each group pruned alone (adaptive BN)",
                "allocation": "Kept channels per layer at the budget: uniform, ranked and searched allocations"}
    pred = doc["predict"]
    md = ["# prunekit report", "", *_headline(doc), "", _md_table(rows), ""]
    if pred.get("top5"):
        md += [f"## Top-5 for `{pred['image']}`" + (f" (label: {pred['label']})" if pred.get("label") else ""), ""]
        md += [f"{i + 1}. {t['label']} — {100 * t['prob']:.1f}%" for i, t in enumerate(pred["top5"])] + [""]
    md += [f"## {captions[k]}\n\n![{k}](report_assets/{k}.png)\n" for k in imgs]
    md += ["## Per-layer pruning", "", _layer_md(doc["prune"]["groups"]), "",
           "Full data: `report.json`; run config: `config.yaml`."]
    write_text(out / "report.md", "\n".join(md) + "\n")
    write_text(out / "report.html", _html(doc, rows, imgs, captions))
    write_json(out / "report.json", doc)
    return {"md": out / "report.md", "html": out / "report.html", "json": out / "report.json"}


def _layer_md(groups: list[dict]) -> str:
    if not groups:
        return "(no pruned layers)"
    out = "| layer | kept / total | sparsity | params before → after | MACs before → after |\n|---|---:|---:|---:|---:|\n"
    for g in groups:
        out += (f"| `{g['layer']}` | {g['kept']} / {g['total']} | {100 * g['sparsity']:.1f}% | "
                f"{g.get('params_before', 0):,} → {g.get('params_after', 0):,} | {g.get('macs_before', 0):,} → "
                f"{g.get('macs_after', 0):,} |\n")
    return out


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222}h2{margin-top:1.6em;border-bottom:1px solid #e5e5e5;padding-bottom:.2em}
.scroll{overflow-x:auto}table{border-collapse:collapse;margin:1em 0;font-size:14px}
th,td{border:1px solid #ccc;padding:4px 10px;text-align:right;white-space:nowrap}th{background:#f3f3f3}
th.l,td.l{text-align:left}tr.total td{font-weight:600;background:#fafafa}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}figure{margin:1.5em 0}figcaption{color:#555;font-size:14px}
code{background:#f6f6f6;padding:1px 4px}.lead{font-size:17px;line-height:1.5;margin:.6em 0}
.pred{display:flex;flex-wrap:wrap;gap:1.5em;align-items:center}.pred img.sample{width:140px;height:auto;
image-rendering:pixelated;border:1px solid #ccc}.pred img.photo{max-width:240px;height:auto}
.pred figcaption{text-align:center}pre{white-space:pre-wrap;font-size:12px}"""

_RUNTIMES = {"pytorch": "PyTorch fp32", "onnx": "ONNX Runtime fp32", "int8": "ONNX Runtime int8"}
_PRUNING_PLOTS = ("sparsity", "kept_channels", "allocation", "sensitivity", "importance_hist", "weight_hist")


def _table(header: list[str], rows: list[list[str]], left: set[int], total: list[str] | None = None) -> str:
    """An HTML table; columns in ``left`` hold text (left-aligned), the others numbers (right-aligned)."""
    e = html.escape

    def cells(r: list[str], tag: str) -> str:
        return "".join(f"<{tag}{' class=l' if i in left else ''}>{c if c.startswith('<code>') else e(c)}</{tag}>"
                       for i, c in enumerate(r))

    out = "<div class=scroll><table><tr>" + cells(header, "th") + "</tr>"
    out += "".join("<tr>" + cells(r, "td") + "</tr>" for r in rows)
    if total:
        out += "<tr class=total>" + cells(total, "td") + "</tr>"
    return out + "</table></div>"


def _thumbnail(path: str | None) -> tuple[bytes, bool] | None:
    """The predicted image as a small PNG (``pixelated``: tiny images shown enlarged without smoothing)."""
    if not path or not Path(path).is_file():
        return None
    try:
        import io

        from PIL import Image

        with Image.open(path) as im:
            small = max(im.size) < 96
            im = im.convert("L" if im.mode in ("L", "I", "I;16", "1") else "RGB")
            im.thumbnail((240, 240))
            buf = io.BytesIO()
            im.save(buf, format="PNG")
        return buf.getvalue(), small
    except Exception:  # a report never fails on a picture
        return None


def _prediction(pred: dict[str, Any]) -> str:
    e = html.escape
    forms = [k for k in _RUNTIMES if pred.get(k)] or (["top5"] if pred.get("top5") else [])
    if not forms:
        return ""
    name = Path(str(pred["image"])).name
    title = f"Top-5 for {e(name)}" + (f" (label: {e(pred['label'])})" if pred.get("label") else "")
    n = max(len(pred[k]) for k in forms)
    rows = [[str(i + 1)] + [f"{pred[k][i]['label']} {100 * pred[k][i]['prob']:.1f}%" if i < len(pred[k]) else ""
                            for k in forms] for i in range(n)]
    table = _table(["#"] + [_RUNTIMES.get(k, "prediction") for k in forms], rows, set(range(1, len(forms) + 1)))
    thumb = _thumbnail(pred.get("image"))
    pic = ""
    if thumb:
        data, small = thumb
        label = e(pred["label"]) if pred.get("label") else e(name)
        pic = (f"<figure><img class={'sample' if small else 'photo'} alt='{e(name)}' "
               f"src='data:image/png;base64,{base64.b64encode(data).decode()}'><figcaption>{label}</figcaption>"
               "</figure>")
    return f"<h2>{title}</h2><div class=pred>{pic}{table}</div>"


def _layers_html(doc: dict[str, Any]) -> str:
    layers = doc["prune"]["groups"]
    if not layers:
        return ""
    e = html.escape
    rows = [[f"<code>{e(g['layer'])}</code>", f"{g['kept']} / {g['total']}", f"{100 * g['sparsity']:.1f}%",
             f"{g.get('params_before', 0):,}", f"{g.get('params_after', 0):,}", f"{g.get('macs_before', 0):,}",
             f"{g.get('macs_after', 0):,}"] for g in layers]
    s = doc["surgery"]
    total = None
    if s.get("params_before") is not None and s.get("macs_before") is not None:
        kept, tot = sum(g["kept"] for g in layers), sum(g["total"] for g in layers)
        total = ["whole model", f"{kept} / {tot}", f"{100 * (1 - kept / tot):.1f}%" if tot else "-",
                 *(f"{s[k]:,}" for k in ("params_before", "params_after", "macs_before", "macs_after"))]
    head = ["layer", "kept / total", "sparsity", "params before", "params after", "MACs before", "MACs after"]
    return ("<h2>Per-layer pruning</h2><p>Channels kept in each pruned group; parameters and MACs of the layers "
            "that produce those channels, before and after surgery. Last row: all pruned channels, and the "
            "parameters and MACs of the whole model.</p>" + _table(head, rows, {0}, total))


def _html(doc: dict[str, Any], rows: list[list[str]], imgs: dict[str, bytes], captions: dict[str, str]) -> str:
    e = html.escape
    summary = _table(rows[0], rows[1:], {0, len(rows[0]) - 1})

    def fig(k: str) -> str:
        return (f"<figure><img alt='{k}' src='data:image/png;base64,{base64.b64encode(imgs[k]).decode()}'>"
                f"<figcaption>{e(captions[k])}</figcaption></figure>")

    pruning = "".join(fig(k) for k in _PRUNING_PLOTS if k in imgs)
    other = "".join(fig(k) for k in imgs if k not in _PRUNING_PLOTS)
    figs = (f"<h2>Pruning</h2>{pruning}" if pruning else "") + (
        f"<h2>Accuracy and cost</h2>{other}" if other else "")
    lead = "".join(f"<p class='lead'>{e(x)}</p>" for x in _headline(doc))
    cfg = e(json.dumps(doc["config"], indent=1))
    return (f"<!doctype html><html><head><meta charset='utf-8'><meta name='viewport' content='width=device-width, "
            f"initial-scale=1'><title>prunekit report</title><style>{_CSS}</style></head><body>"
            f"<h1>prunekit report</h1>{lead}{summary}{_prediction(doc['predict'])}{figs}{_layers_html(doc)}"
            f"<details><summary>run config</summary><pre>{cfg}</pre></details><p style='color:#888'>prunekit "
            f"{e(doc['prunekit_version'])} · {e(doc['created'])} · {e(doc['machine']['platform'])}</p>"
            "</body></html>\n")
