"""An index of the result files: which script made each one, when, at which commit, on which machine, and whether the
README, the CHANGELOG or the benchmarks README cite it (an uncited file is a superseded or exploratory run).

    python benchmarks/index_results.py             # writes benchmarks/results/INDEX.md
    python benchmarks/index_results.py --check     # exit 1 when INDEX.md is not what this would write
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CITERS = ("README.md", "CHANGELOG.md", "benchmarks/README.md")


def _provenance(doc: dict[str, Any]) -> dict[str, Any]:
    """Commit, date and machine from a result file (the provenance block, or the older top-level fields)."""
    p = doc.get("provenance") or (doc.get("environment") or {}).get("provenance") or {}
    machine = p.get("machine") or doc.get("machine") or {}
    commit = p.get("git_commit") or doc.get("commit") or ""
    return {"commit": str(commit)[:10] + (" + local changes" if p.get("git_dirty") else ""),
            "date": str(p.get("recorded") or doc.get("date") or "")[:16],
            "machine": " ".join(str(x) for x in (machine.get("cpu"), machine.get("cpu_class")) if x) if isinstance(
                machine, dict) else str(machine)}


def _script(doc: dict[str, Any], stem: str) -> str:
    m = re.search(r"benchmarks/(\w+)\.py", str(doc.get("command") or (doc.get("environment") or {}).get("command")))
    if m:
        return m.group(1)
    return {"round_to": "deploy_bench", "deploy": "deploy_bench"}.get(stem.split("_quick")[0], stem.split("_quick")[0])


def _title(md: Path) -> str:
    if md.is_file():
        for line in md.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("# "):
                return line[2:].strip().replace("|", "/")
    return ""


def build(results: Path, root: Path) -> str:
    """The index's Markdown for every ``*.json`` in ``results`` (not its sub-folders)."""
    cited_text = "\n".join((root / c).read_text(encoding="utf-8") for c in CITERS if (root / c).is_file())
    groups: dict[str, list[tuple[str, str]]] = {}
    for j in sorted(results.glob("*.json")):
        try:
            doc = json.loads(j.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            doc = {}
        doc = doc if isinstance(doc, dict) else {}
        p = _provenance(doc)
        md = j.with_suffix(".md")
        name = md.name if md.is_file() else j.name
        cited = "yes" if re.search(re.escape(j.stem) + r"\.(md|json)", cited_text) else ""
        row = f"| [{j.stem}]({name}) | {_title(md)} | {p['commit']} | {p['date']} | {p['machine']} | {cited} |"
        groups.setdefault(_script(doc, j.stem), []).append((p["date"], row))
    n = sum(len(v) for v in groups.values())
    cited_n = sum(row.endswith("| yes |") for v in groups.values() for _, row in v)
    lines = ["# Result files", "",
             f"Written by `benchmarks/index_results.py` from the {n} result files here ({cited_n} cited by "
             f"{', '.join(CITERS)}; an uncited file is a superseded or exploratory run). Each file records its own "
             "command, commit, package versions and machine; `archive/` holds results from before that rule.", ""]
    for script in sorted(groups):
        lines += [f"## {script}", "", "| file | title | commit | recorded (UTC) | machine | cited |",
                  "|---|---|---|---|---|---|"]
        lines += [row for _, row in sorted(groups[script])]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--check", action="store_true", help="compare with INDEX.md instead of writing it")
    args = ap.parse_args(argv)
    text = build(args.results, ROOT)
    out = args.results / "INDEX.md"
    if args.check:
        same = out.is_file() and out.read_text(encoding="utf-8") == text
        print(f"{out}: {'up to date' if same else 'out of date: run python benchmarks/index_results.py'}")
        return 0 if same else 1
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
