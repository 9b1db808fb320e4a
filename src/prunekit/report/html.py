"""The pipeline report: ``report.md``, a self-contained ``report.html`` (plots inlined) and ``report.json``."""

from __future__ import annotations

import base64
import html
import json
import platform
import time
from pathlib import Path
from typing import Any

from .. import __version__
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
        "surgery": {"max_abs_diff": surg.get("max_abs_diff"), "params_before": surg.get("params_before"),
                    "params_after": surg.get("params_after"), "macs_before": surg.get("macs_before"),
                    "macs_after": surg.get("macs_after"), "channels_removed": surg.get("channels_removed")},
        "prune": {"sparsity": (r.get("prune") or {}).get("sparsity"),
                  "groups": (_read(p.stage_dir("prune") / "summary.json") or {}).get("groups", [])},
        "predict": {"image": pred.get("image"), "label": pred.get("label"), "top5": pred.get("top5"),
                    "pytorch": pred.get("pytorch"), "onnx": pred.get("onnx"), "int8": pred.get("int8")},
        "export": r.get("export"),
        "quantize": {k: v for k, v in (r.get("quantize") or {}).items() if not isinstance(v, (dict, list))},
        "seconds": {k: v.get("seconds") for k, v in r.items() if isinstance(v, dict) and "seconds" in v},
    }
    if dense:
        for k, s in doc["stages"].items():
            s["params_ratio"] = s["params"] / dense["params"] if dense.get("params") else None
            s["size_ratio"] = s["size_bytes"] / dense["size_bytes"] if dense.get("size_bytes") else None
            if s.get("latency_ms") and dense.get("latency_ms"):
                s["speedup"] = dense["latency_ms"] / s["latency_ms"]
    return doc


def _plots(p, doc: dict[str, Any], assets: Path) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    prune_dir = p.stage_dir("prune")
    m = _metrics(prune_dir / "metrics.jsonl")
    if m:
        out["sparsity"] = plots.sparsity_curve(m, assets / "sparsity.png")
    groups = doc["prune"]["groups"]
    if groups:
        out["kept_channels"] = plots.kept_channels(groups, assets / "kept_channels.png")
    for name in ("weight_hist", "importance_hist"):
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


def summary_rows(doc: dict[str, Any]) -> list[list[str]]:
    rows = [["stage", "top-1", "top-5", "params", "MACs", "size", "latency (b=1)", "runtime"]]
    for k, s in doc["stages"].items():
        lat = f"{s['latency_ms']:.2f} ms" if s.get("latency_ms") else "-"
        rows.append([k, f"{s['top1']:.2f}%", f"{s['top5']:.2f}%", human(s["params"]), human(s["macs"]),
                     human(s["size_bytes"], "B"), lat, s.get("runtime", "")])
    return rows


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
        sp = f", {d['latency_ms'] / q['latency_ms']:.1f}x faster at batch 1" if d.get("latency_ms") and q.get(
            "latency_ms") else ""
        lines.append(f"The int8 model is {d['size_bytes'] / q['size_bytes']:.1f}x smaller than the dense fp32 model"
                     f"{sp} (top-1 {q['top1']:.2f}%).")
    if doc["surgery"].get("max_abs_diff") is not None:
        lines.append(f"Surgery verified: the shrunk model reproduces the masked model to "
                     f"{doc['surgery']['max_abs_diff']:.1e} (max abs diff, fp32).")
    return lines


def write_report(p, out: Path) -> dict[str, Path]:
    doc = collect(p)
    assets = out / "report_assets"
    imgs = _plots(p, doc, assets)
    rows = summary_rows(doc)
    captions = {"sparsity": "Sparsity and test accuracy during pruning", "kept_channels": "Kept / total channels "
                "per pruned layer", "weight_hist": "Weight magnitudes before vs after pruning", "importance_hist":
                "Channel importance per layer (grey: all channels before pruning, blue: kept)",
                "accuracy_vs_macs": "Top-1 vs MACs across stages"}
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
padding:0 1em;color:#222}table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;
padding:4px 10px;text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}figure{margin:1.5em 0}figcaption{color:#555;font-size:14px}
code{background:#f6f6f6;padding:1px 4px}.lead{font-size:17px;line-height:1.5}"""


def _html(doc: dict[str, Any], rows: list[list[str]], imgs: dict[str, bytes], captions: dict[str, str]) -> str:
    e = html.escape
    t = "<table><tr>" + "".join(f"<th>{e(c)}</th>" for c in rows[0]) + "</tr>"
    for r in rows[1:]:
        t += "<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>"
    t += "</table>"
    pred = doc["predict"]
    ptab = ""
    if pred.get("top5"):
        ptab = (f"<h2>Top-5 for {e(Path(str(pred['image'])).name)}" + (f" (label: {e(pred['label'])})" if
                pred.get("label") else "") + "</h2><table><tr><th>#</th><th>class</th><th>probability</th></tr>")
        ptab += "".join(f"<tr><td>{i + 1}</td><td>{e(x['label'])}</td><td>{100 * x['prob']:.1f}%</td></tr>"
                        for i, x in enumerate(pred["top5"])) + "</table>"
    figs = "".join(f"<figure><img alt='{k}' src='data:image/png;base64,{base64.b64encode(v).decode()}'>"
                   f"<figcaption>{e(captions[k])}</figcaption></figure>" for k, v in imgs.items())
    layers = doc["prune"]["groups"]
    ltab = ""
    if layers:
        ltab = ("<h2>Per-layer pruning</h2><table><tr><th>layer</th><th>kept / total</th><th>sparsity</th>"
                "<th>params before</th><th>params after</th><th>MACs before</th><th>MACs after</th></tr>")
        ltab += "".join(f"<tr><td><code>{e(g['layer'])}</code></td><td>{g['kept']} / {g['total']}</td>"
                        f"<td>{100 * g['sparsity']:.1f}%</td><td>{g.get('params_before', 0):,}</td>"
                        f"<td>{g.get('params_after', 0):,}</td><td>{g.get('macs_before', 0):,}</td>"
                        f"<td>{g.get('macs_after', 0):,}</td></tr>" for g in layers) + "</table>"
    lead = "".join(f"<p class='lead'>{e(x)}</p>" for x in _headline(doc))
    cfg = e(json.dumps(doc["config"], indent=1))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>prunekit report</title><style>{_CSS}</style>"
            f"</head><body><h1>prunekit report</h1>{lead}{t}{ptab}{figs}{ltab}<details><summary>run config</summary>"
            f"<pre>{cfg}</pre></details><p style='color:#888'>prunekit {e(doc['prunekit_version'])} · "
            f"{e(doc['created'])} · {e(doc['machine']['platform'])}</p></body></html>\n")
