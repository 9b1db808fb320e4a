"""benchmarks/index_results.py: the index of result files, and that the committed one is current."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _index():
    spec = importlib.util.spec_from_file_location("index_results", ROOT / "benchmarks" / "index_results.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_index_groups_by_script_and_marks_cited_files(tmp_path):
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    prov = {"git_commit": "0123456789abcdef", "git_dirty": ["x"], "recorded": "2026-12-02 04:39:18 UTC",
            "machine": {"cpu": "AMD EPYC", "cpu_class": "x86-vnni"}}
    (results / "latency_model_quick.json").write_text(json.dumps(
        {"command": ".venv/bin/python benchmarks/latency_model.py --quick", "provenance": prov}))
    (results / "latency_model_quick.md").write_text("# Latency model accuracy\n\nbody\n")
    (results / "old_run.json").write_text(json.dumps({"command": "python benchmarks/latency_model.py",
                                                      "commit": "fedcba9876543210", "date": "2026-11-30 07:00"}))
    (results / "broken.json").write_text("{not json")
    (tmp_path / "README.md").write_text("see [it](benchmarks/results/latency_model_quick.md)\n")
    text = _index().build(results, tmp_path)
    rows = [line for line in text.splitlines() if line.startswith("| [")]
    assert len(rows) == 3 and "from the 3 result files here (1 cited" in text
    assert ("| [latency_model_quick](latency_model_quick.md) | Latency model accuracy | 0123456789 + local changes | "
            "2026-12-02 04:39 | AMD EPYC x86-vnni | yes |") in rows
    assert "| [old_run](old_run.json) |  | fedcba9876 | 2026-11-30 07:00 |  |  |" in rows  # older fields, uncited
    assert text.index("## broken") < text.index("## latency_model")
    assert text.count("## latency_model") == 1  # both latency_model runs in one group


def test_committed_index_is_current():
    assert _index().main(["--check"]) == 0, "run: python benchmarks/index_results.py"
