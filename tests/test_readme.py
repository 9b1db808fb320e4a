"""The README's Python API example runs as written (one example per public verb)."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import prunekit

README = Path(__file__).resolve().parents[1] / "README.md"


def _api_block() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_api_example_runs_and_uses_every_verb(tmp_path, monkeypatch):
    code = _api_block()
    verbs = [n for n in prunekit.__all__ if n[0].islower() and not n.startswith("_")]
    assert all(f"prunekit.{v}(" in code for v in verbs), [v for v in verbs if f"prunekit.{v}(" not in code]
    (tmp_path / "example.py").write_text(code)
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(tmp_path / "example.py"), run_name="__main__")
    assert (tmp_path / "runs" / "small.int8.onnx").is_file() and (tmp_path / "runs" / "masked" / "model.json").is_file()
