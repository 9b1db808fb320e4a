"""examples/pruning_guide.ipynb runs end to end (tiny settings) and shows what the guide promises."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "pruning_guide.ipynb"


def _text(cell) -> str:
    out = []
    for o in cell.get("outputs", []):
        if o.output_type == "stream":
            out.append(o.text)
        elif o.output_type in ("display_data", "execute_result"):
            out.append(o.get("data", {}).get("text/markdown", ""))
    return "".join(out)


def _pngs(cell) -> int:
    return sum("image/png" in o.get("data", {}) for o in cell.get("outputs", [])
               if o.output_type in ("display_data", "execute_result"))


def _cell(nb, needle: str):
    hits = [c for c in nb.cells if c.cell_type == "code" and needle in c.source]
    assert len(hits) == 1, f"expected one code cell containing {needle!r}, found {len(hits)}"
    return hits[0]


def test_notebook_is_stored_clean():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "store the notebook without outputs"
    assert "parameters" in code[0].metadata.get("tags", []), "the first code cell holds the parameters"
    assert "PRUNEKIT_NOTEBOOK_FAST" in code[0].source
    assert not any(c.source.lstrip().startswith(("!", "%%bash")) or "subprocess" in c.source for c in code), \
        "the guide uses the library API, not the CLI"


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The notebook executed by a real Jupyter kernel (this interpreter) with PRUNEKIT_NOTEBOOK_FAST=1."""
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
    from jupyter_client.manager import KernelManager

    work = tmp_path_factory.mktemp("notebook")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # A kernel spec that runs this very interpreter (the venv with prunekit), whatever kernels are installed.
    spec_dir = work / "kernels" / "prunekit-test"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(KernelSpec(
        argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        display_name="prunekit test", language="python").to_json())
    ksm = KernelSpecManager(kernel_dirs=[str(work / "kernels")])
    out = work / "out"
    mp = pytest.MonkeyPatch()
    mp.setenv("PRUNEKIT_NOTEBOOK_FAST", "1")
    mp.setenv("PRUNEKIT_NOTEBOOK_OUT", str(out))
    mp.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    try:
        km = KernelManager(kernel_name="prunekit-test", kernel_spec_manager=ksm)
        client = nbclient.NotebookClient(nb, km=km, timeout=300, resources={"metadata": {"path": str(work)}})
        client.execute()  # raises CellExecutionError (with the traceback) if any cell fails
    finally:
        mp.undo()
    return nb, out


def test_notebook_runs_and_shows_every_step(executed):
    nb, out = executed
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code)
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    stderr = "".join(o.text for c in code for o in c.outputs if o.output_type == "stream" and o.name == "stderr")
    assert "Traceback" not in stderr

    # the per-layer summary of the dense model lists the pointwise layers
    assert "blocks.12.pw.conv" in _text(_cell(nb, "print(format_table(dense_profile))"))

    # pruning happened gradually (several mask updates) and reached the final sparsity
    prune_out = _text(_cell(nb, "callbacks=[pruner]"))
    updates = re.findall(r"step +\d+: target K = ([\d.]+) -> (\d+) of (\d+) channels kept", prune_out)
    assert len(updates) >= 2
    kept = [int(k) for _, k, _ in updates]
    assert kept == sorted(kept, reverse=True) and kept[0] > kept[-1]
    assert float(updates[-1][0]) == pytest.approx(0.75)
    assert "sparsity 75.0%" in prune_out

    # a mask is shown as zeros and ones
    mask = _text(_cell(nb, "pruner.bank.masks()[0]")).splitlines()[-1]
    assert set(mask) == {"0", "1"}

    # histograms (importance + weights), schedule, kept-channel chart and the sample/test images, displayed inline
    assert _pngs(_cell(nb, "plots.importance_histograms(panels)")) == 2
    assert _pngs(_cell(nb, "plots.kept_channels(rows)")) == 1
    assert _pngs(_cell(nb, "PolynomialDecay(")) == 1
    assert _pngs(_cell(nb, 'load_data("bundled")')) == 1
    assert _pngs(_cell(nb, "image_path = ")) == 1, "the test image is shown (matplotlib inline still works " \
                                                   "after prunekit's own plots)"
    assert "| **model** |" in _text(_cell(nb, "plots.kept_channels(rows)"))

    # surgery found the zeroed channels, removed them, and matches the masked model
    surgery = _text(_cell(nb, "pruner.shrink()"))
    assert "same as the masks: True" in surgery
    diff = float(re.search(r"max abs diff between masked and shrunk model = ([\d.e+-]+)", surgery).group(1))
    assert diff < 1e-4

    # the model shrank
    shrink = _text(_cell(nb, "print(format_table(small_profile))"))
    params = float(re.search(r"parameters .*\(([\d.]+)% smaller\)", shrink).group(1))
    macs = float(re.search(r"MACs .*\(([\d.]+)% fewer\)", shrink).group(1))
    assert params > 60 and macs > 60
    reload = _text(_cell(nb, 'load(OUT / "pruned")'))
    assert float(re.search(r"max abs diff ([\d.e+-]+)", reload).group(1)) < 1e-5

    # export verified, int8 written
    export = _text(_cell(nb, "prunekit.quantize("))
    assert float(re.search(r"max abs diff vs PyTorch ([\d.e+-]+)", export).group(1)) < 1e-4
    assert (out / "model.onnx").is_file() and (out / "model.int8.onnx").is_file()
    assert (out / "pruned" / "model.json").is_file() and (out / "finetuned" / "model.safetensors").is_file()

    # top-5 for the test image, from every deployed form
    top5 = [ln for ln in _text(_cell(nb, "image_path = ")).splitlines() if ln.startswith("top-5")]
    assert len(top5) == 4
    for ln in top5:
        probs = [float(p) for p in re.findall(r" ([\d.]+)%", ln)]
        assert len(probs) == 5 and probs == sorted(probs, reverse=True) and sum(probs) <= 100.5

    # the comparison table has a row per form with accuracy, size and latency
    table = _text(_cell(nb, "time_runs("))
    rows = [ln for ln in table.splitlines() if ln.startswith("| ") and " ms |" in ln]
    assert len(rows) == 4
    assert "int8 file" in table
