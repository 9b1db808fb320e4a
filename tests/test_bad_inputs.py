"""Bad-input matrix: every mistake a user can make, through the real CLI in a fresh process.

Each case asserts exit code 2, exactly one non-empty line on stderr naming the problem, no traceback on
either stream, and — where the command points at an existing result — that nothing there changed (file
names, sizes, mtimes and contents). docs/errors.md lists the same cases with the messages users see.

The model directories here are untrained MobileNet V1 (width 0.25) saved through the library: the inputs are
broken on purpose, so no session fixture (which trains for minutes) is needed, and most cases fail before any
training or evaluation.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_cli, run_cli_subprocess

BUNDLED = Path(__file__).resolve().parents[1] / "src" / "prunekit" / "data" / "bundled"
# One intra-op thread: the CLI processes start faster and do not fight over the shared cores.
ENV = {"OMP_NUM_THREADS": "1"}


# --- the world of broken inputs (built once per module) -------------------------------------------------


def _save_model(directory: Path, **model_kwargs) -> Path:
    from prunekit.config import ModelCfg
    from prunekit.data import load_data
    from prunekit.saved import save
    from prunekit.steps import build_model

    torch.manual_seed(0)
    model, spec = build_model(ModelCfg(width=0.25, **model_kwargs), load_data("bundled"))
    save(model, directory, spec)
    return directory


def _edited_model(src: Path, dst: Path, edit: Callable[[dict], None]) -> Path:
    shutil.copytree(src, dst)
    doc = json.loads((dst / "model.json").read_text())
    edit(doc)
    (dst / "model.json").write_text(json.dumps(doc))
    return dst


def _fmnist_copy(root: Path, name: str) -> Path:
    d = root / name
    d.mkdir()
    for f in BUNDLED.glob("*.gz"):
        shutil.copy(f, d / f.name)
    return d


def _write_idx_gz(path: Path, header: bytes, payload: bytes) -> None:
    with gzip.open(path, "wb") as f:
        f.write(header + payload)


def _images(folder: Path, classes=("Bag", "Coat"), n=3, mode="L", size=(28, 28)) -> Path:
    for c in classes:
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new(mode, size, 40 * i).save(folder / c / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def w(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad_inputs")
    p: dict[str, Path] = {"root": root, "new_out": root / "new_run"}
    m = p["model"] = _save_model(root / "model")

    # models
    trunc = shutil.copytree(m, root / "m_truncated")
    raw = (trunc / "model.safetensors").read_bytes()
    (trunc / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    p["m_truncated"] = trunc
    p["m_shapes"] = _edited_model(m, root / "m_shapes",
                                  lambda d: d["layers"]["blocks.0.pw.conv"].update(out_channels=7))
    p["m_arch"] = _edited_model(m, root / "m_arch", lambda d: d.update(arch="resnet_9000"))
    p["m_field"] = _edited_model(m, root / "m_field", lambda d: d.update(colour="blue"))
    p["m_kwarg"] = _edited_model(m, root / "m_kwarg", lambda d: d["kwargs"].update(colour="blue"))
    p["m_channels"] = _edited_model(m, root / "m_channels",
                                    lambda d: d["input"].update(channels=3, mean=[0.5] * 3, std=[0.25] * 3))
    p["m_classes"] = _edited_model(m, root / "m_classes", lambda d: d.update(class_names=["cat", "dog"]))
    # model files that lie about sizes (issue 21): refused before anything of that size is allocated
    p["m_huge_layer"] = _edited_model(m, root / "m_huge_layer",
                                      lambda d: d["layers"]["blocks.0.pw.conv"].update(out_channels=10**9))
    p["m_huge_input"] = _edited_model(m, root / "m_huge_input", lambda d: d["input"].update(size=[60000, 60000]))
    p["m_huge_linear"] = _edited_model(m, root / "m_huge_linear", lambda d: d["layers"]["classifier"].update(
        in_features=65536, out_features=65536))
    # within the limits, ~6 GiB for one image: refused by the estimate against --max-memory 1G (should the check
    # regress, the real allocation still fits on a test machine)
    p["m_big_input"] = _edited_model(m, root / "m_big_input", lambda d: d["input"].update(size=[2048, 2048]))
    badjson = shutil.copytree(m, root / "m_badjson")
    (badjson / "model.json").write_text('{"format": "prunekit-model", "arch": ')
    p["m_badjson"] = badjson
    p["m_file"] = root / "model.txt"
    p["m_file"].write_text("not a model directory")

    # Fashion-MNIST directories, each broken in one way (the train files are read first)
    d = _fmnist_copy(root, "fm_truncated")
    raw = (d / "train-images-idx3-ubyte.gz").read_bytes()
    (d / "train-images-idx3-ubyte.gz").write_bytes(raw[: len(raw) // 3])
    p["fm_truncated"] = d
    d = _fmnist_copy(root, "fm_notgzip")
    (d / "train-images-idx3-ubyte.gz").write_bytes(b"this is not gzip data\n" * 20)
    p["fm_notgzip"] = d
    d = _fmnist_copy(root, "fm_magic")
    _write_idx_gz(d / "train-images-idx3-ubyte.gz", bytes([0x12, 0x34, 0x08, 0x03]), bytes(64))
    p["fm_magic"] = d
    d = _fmnist_copy(root, "fm_count")  # 4000 images, 3999 labels
    _write_idx_gz(d / "train-labels-idx1-ubyte.gz", bytes([0, 0, 8, 1]) + (3999).to_bytes(4, "big"), bytes(3999))
    p["fm_count"] = d
    d = _fmnist_copy(root, "fm_label")  # a label 12 in a 10-class dataset
    _write_idx_gz(d / "train-labels-idx1-ubyte.gz", bytes([0, 0, 8, 1]) + (4000).to_bytes(4, "big"),
                  bytes(3999) + bytes([12]))
    p["fm_label"] = d
    d = _fmnist_copy(root, "fm_short")  # the header promises more pixels than the file holds
    _write_idx_gz(d / "train-images-idx3-ubyte.gz",
                  bytes([0, 0, 8, 3]) + b"".join(v.to_bytes(4, "big") for v in (4000, 28, 28)), bytes(1000))
    p["fm_short"] = d

    # image folders
    (root / "if_empty").mkdir()
    p["if_empty"] = root / "if_empty"
    (root / "if_text" / "Bag").mkdir(parents=True)
    (root / "if_text" / "Bag" / "README.txt").write_text("no images here")
    (root / "if_text" / "Coat").mkdir()
    (root / "if_text" / "Coat" / "labels.csv").write_text("a,b\n")
    p["if_text"] = root / "if_text"
    p["if_notimage"] = _images(root / "if_notimage")
    (p["if_notimage"] / "Bag" / "0.png").write_text("PNG? no, just text")
    p["if_huge"] = _images(root / "if_huge")
    # > 64M pixels (the decompression-bomb guard) yet a tiny file: a 1-bit PNG of zeros compresses ~1000:1.
    # 8100x8000 stays under PIL's own warning threshold (89M), so the guard itself is what fires.
    big = p["if_huge"] / "Bag" / "big.png"
    Image.new("1", (8100, 8000)).save(big)
    assert big.stat().st_size < 100_000
    p["huge_png"] = big

    # existing results that a failing command must leave alone
    done = root / "run_done"
    shutil.copytree(m, done / "model")
    (done / "config.yaml").write_text("out: run_done\n")
    (done / "metrics.jsonl").write_text('{"step": 1}\n')
    p["run_done"] = done
    p["shrunk_done"] = shutil.copytree(m, root / "shrunk_done")
    p["onnx_done"] = root / "done.onnx"
    p["onnx_done"].write_bytes(b"an earlier export")
    p["bench_dir"] = root / "bench_results"
    p["bench_dir"].mkdir()
    (p["bench_dir"] / "old.json").write_text("{}\n")
    from prunekit.io import torch_save

    resume = root / "run_resume"  # a checkpoint from another training config
    resume.mkdir()
    torch_save(resume / "checkpoint.pt", {"model": {}, "optimizer": {}, "step": 3, "rng": {},
                                          "fingerprint": {"epochs": 99}})
    (resume / "config.yaml").write_text("out: run_resume\n")
    (resume / "metrics.jsonl").write_text('{"step": 1}\n')
    p["run_resume"] = resume
    corrupt = shutil.copytree(resume, root / "run_corrupt")
    ck = (corrupt / "checkpoint.pt").read_bytes()
    (corrupt / "checkpoint.pt").write_bytes(ck[: len(ck) // 2])
    p["run_corrupt"] = corrupt
    foreign = shutil.copytree(resume, root / "run_foreign")  # a valid torch file, not a prunekit checkpoint
    torch_save(foreign / "checkpoint.pt", {"weights": torch.zeros(3)})
    p["run_foreign"] = foreign

    # a real checkpoint (one step) of a width-0.25 model, to be resumed with another width
    rc, _, se = run_cli("train", "--data", "bundled", "--width", "0.25", "--device", "cpu", "--set", "train.max_steps=1",
                        "--out", root / "run_w25")
    assert rc == 0, se
    p["run_w25"] = root / "run_w25"

    # configs
    (root / "typo.yaml").write_text("trian:\n  epochs: 1\n")
    (root / "broken.yaml").write_text("train: [1, 2\n")
    p["typo_yaml"], p["broken_yaml"] = root / "typo.yaml", root / "broken.yaml"
    return p


# --- the cases ----------------------------------------------------------------------------------------


@dataclass
class Case:
    id: str
    args: Callable[[dict[str, Path]], list]
    match: str
    protect: Callable[[dict[str, Path]], list[Path]] = field(default=lambda w: [])


def _eval(data: str, key: str | None = None, model: str = "model"):
    return lambda w: ["eval", "--model", w[model], "--data", data, *(["--data-dir", w[key]] if key else []),
                      "--device", "cpu"]


def _train(*extra):
    # train.max_steps=1 first: should a case wrongly pass validation, it trains one step, not ten epochs
    return lambda w: ["train", "--data", "bundled", "--width", "0.25", "--device", "cpu", "--set", "train.max_steps=1",
                      *[w[x[1:]] if isinstance(x, str) and x.startswith("@") else x for x in extra]]


def _prune(*extra):
    return lambda w: ["prune", "--model", w["model"], "--data", "bundled", "--epochs", "1", "--device", "cpu",
                      "--out", w["root"] / "prune_out", *extra]


CASES = [
    # data
    Case("data/fashion-mnist-dir-missing", lambda w: ["eval", "--model", w["model"], "--data", "fashion-mnist",
                                                      "--data-dir", w["root"] / "nope"],
         "Fashion-MNIST directory not found"),
    Case("data/gz-truncated", _eval("fashion-mnist", "fm_truncated"), "corrupt or truncated file"),
    Case("data/gz-not-gzip", _eval("fashion-mnist", "fm_notgzip"), "corrupt or truncated file"),
    Case("data/idx-wrong-magic", _eval("fashion-mnist", "fm_magic"), "wrong IDX magic number"),
    Case("data/idx-count-mismatch", _eval("fashion-mnist", "fm_count"), "holds 4000 images but"),
    Case("data/idx-label-out-of-range", _eval("fashion-mnist", "fm_label"), "label 12 out of range"),
    Case("data/idx-payload-short", _eval("fashion-mnist", "fm_short"), "but the file holds"),
    Case("data/imagefolder-missing", lambda w: ["eval", "--model", w["model"], "--data", "imagefolder",
                                                "--data-dir", w["root"] / "no_such_folder"],
         "image folder not found"),
    Case("data/imagefolder-empty", _eval("imagefolder", "if_empty"), "has no class subdirectories"),
    Case("data/imagefolder-only-non-images", _eval("imagefolder", "if_text"), "contains no images"),
    Case("data/png-not-an-image", _eval("imagefolder", "if_notimage"), "not a readable image"),
    Case("data/huge-image-in-folder", _eval("imagefolder", "if_huge"), "image too large"),
    Case("data/huge-image-predict", lambda w: ["predict", w["huge_png"], "--model", w["model"]], "image too large"),
    Case("data/imagefolder-without-data-dir", _eval("imagefolder"), "needs --data-dir"),
    Case("data/predict-image-missing", lambda w: ["predict", w["root"] / "nope.png", "--model", w["model"]],
         "image not found"),
    # models
    Case("model/dir-missing", lambda w: ["summary", "--model", w["root"] / "no_model"], "model directory not found"),
    Case("model/path-is-a-file", lambda w: ["summary", "--model", w["m_file"]], "expected a model directory"),
    Case("model/safetensors-truncated", lambda w: ["summary", "--model", w["m_truncated"]],
         "corrupt or not a safetensors file"),
    Case("model/json-wrong-shapes", lambda w: ["eval", "--model", w["m_shapes"]], "does not match model.json"),
    Case("model/json-invalid", lambda w: ["plan", "--model", w["m_badjson"]], "is not valid JSON"),
    Case("model/unknown-arch", lambda w: ["summary", "--model", w["m_arch"]], "unknown arch 'resnet_9000'"),
    Case("model/unknown-field", lambda w: ["summary", "--model", w["m_field"]], "unknown field 'colour'"),
    Case("model/unknown-builder-argument", lambda w: ["summary", "--model", w["m_kwarg"]],
         "unknown argument 'colour'"),
    Case("model/input-channels-vs-weights", lambda w: ["eval", "--model", w["m_channels"]],
         "input.channels is 3 but"),
    Case("model/classes-vs-data", lambda w: ["eval", "--model", w["m_classes"], "--data", "bundled"],
         "the model has 2 classes but"),
    Case("model/json-huge-layer", lambda w: ["eval", "--model", w["m_huge_layer"]],
         "out_channels must be positive integer(s) <= 65536, got 1000000000"),
    Case("model/json-huge-input", lambda w: ["eval", "--model", w["m_huge_input"]],
         "input.size must be at most 4096 pixels per side, got [60000, 60000]"),
    Case("model/json-layers-vs-weights-header", lambda w: ["summary", "--model", w["m_huge_linear"]],
         "the architecture expects [65536, 65536]"),
    Case("model/memory-estimate", lambda w: ["--max-memory", "1G", "summary", "--model", w["m_big_input"]],
         "of memory but only 1.0 GiB is available (--max-memory)"),
    # configs
    Case("config/unknown-key", _train("--out", "@new_out", "--set", "train.bogus=1"),
         "unknown config key 'train.bogus'"),
    Case("config/yaml-typo", lambda w: ["train", "--config", w["typo_yaml"], "--out", w["root"] / "t"],
         "did you mean 'train'"),
    Case("config/yaml-invalid", lambda w: ["run", w["broken_yaml"]], "invalid YAML"),
    Case("config/wrong-type", _train("--out", "@new_out", "--set", "train.lr=fast"), "train.lr must be a number"),
    Case("config/nan", _train("--out", "@new_out", "--set", "train.epochs=.nan"), "train.epochs must be finite"),
    Case("config/sparsity-one", _prune("--final-sparsity", "1"), "must be in [0, 1)"),
    Case("config/sparsity-negative", _prune("--final-sparsity", "-0.1"), "must be in [0, 1)"),
    Case("config/sparsity-nan", _prune("--final-sparsity", "nan"), "--final-sparsity must be finite"),
    Case("config/begin-after-end", _prune("--begin-step", "50", "--end-step", "10"),
         "begin_step (50) must be <= end_step (10)"),
    Case("config/begin-after-end-yaml", _train("--out", "@new_out", "--set", "prune.schedule.begin_step=10",
                                               "--set", "prune.schedule.end_step=5"), "must be <= end_step"),
    Case("config/initial-above-final", _prune("--initial-sparsity", "0.8", "--final-sparsity", "0.5"),
         "exceeds the final sparsity"),
    Case("config/end-epoch-after-epochs", _prune("--end-epoch", "3"), "is after the last epoch"),
    Case("config/frequency-zero", _prune("--frequency", "0"), "--frequency must be >= 1"),
    Case("config/budget-unknown-kind", _prune("--budget", "flops=0.5x"), "unknown kind 'flops'"),
    Case("config/budget-relative-too-large", _prune("--budget", "macs=1.5x"), "and < 1x"),
    Case("config/layers-match-nothing", lambda w: ["plan", "--model", w["model"], "--layers", "no_such_layer"],
         "matches no prunable layer"),
    Case("config/layers-bad-regex", _prune("--layers", "blocks.(1"), "invalid layer regex"),
    Case("config/resume-other-config", _train("--out", "@run_resume", "--resume"),
         "different training config", lambda w: [w["run_resume"]]),
    Case("config/resume-corrupt-checkpoint", _train("--out", "@run_corrupt", "--resume"), "could not be read",
         lambda w: [w["run_corrupt"]]),
    Case("config/resume-foreign-checkpoint", _train("--out", "@run_foreign", "--resume"),
         "not a prunekit training checkpoint", lambda w: [w["run_foreign"]]),
    Case("config/resume-other-model", _train("--out", "@run_w25", "--resume", "--width", "0.5"),
         "does not match this model", lambda w: [w["run_w25"]]),
    # CLI use
    Case("cli/missing-required-flag", lambda w: ["eval", "--data", "bundled"],
         "the following arguments are required: --model"),
    Case("cli/bad-number", lambda w: ["eval", "--model", w["model"], "--batch-size", "ten"],
         "--batch-size must be an integer"),
    Case("cli/unknown-command", lambda w: ["trian", "--out", w["new_out"]], "invalid choice: 'trian'"),
    Case("cli/unknown-choice", _prune("--criterion", "magic"), "invalid choice: 'magic'"),
    Case("cli/bad-max-memory", lambda w: ["--max-memory", "lots", "summary", "--model", w["model"]],
         "--max-memory must be a size like 8G"),
    Case("cli/unknown-device", lambda w: ["eval", "--model", w["model"], "--device", "tpu9"], "unknown device"),
    Case("cli/out-is-a-file", _train("--out", "@m_file"), "exists and is not a directory",
         lambda w: [w["m_file"]]),
    Case("cli/out-below-a-file", lambda w: ["surgery", "--model", w["model"], "--sparsity", "0.5",
                                            "--out", w["m_file"] / "shrunk"], "cannot create output directory",
         lambda w: [w["m_file"]]),
    Case("cli/out-unwritable-proc", _train("--out", "/proc/prunekit-test/run"), "cannot create output directory"),
    Case("cli/out-holds-train-result", _train("--out", "@run_done"), "already holds a result",
         lambda w: [w["run_done"]]),
    Case("cli/out-holds-prune-result", lambda w: ["prune", "--model", w["model"], "--out", w["run_done"]],
         "already holds a result", lambda w: [w["run_done"]]),
    Case("cli/out-holds-surgery-result", lambda w: ["surgery", "--model", w["model"], "--sparsity", "0.5",
                                                    "--out", w["shrunk_done"]], "already holds a result",
         lambda w: [w["shrunk_done"]]),
    Case("cli/out-export-file-exists", lambda w: ["export", "--model", w["model"], "--out", w["onnx_done"]],
         "already exists", lambda w: [w["onnx_done"]]),
    Case("cli/bench-out-is-a-directory", lambda w: ["bench", "--model", w["model"], "--out", w["bench_dir"]],
         "is a directory", lambda w: [w["bench_dir"]]),
]


def snapshot(paths: list[Path]) -> dict[str, tuple]:
    """Every file under ``paths`` with its size, mtime and content hash, every directory (so that a file
    added or left behind shows up), and the paths that do not exist (so that one created shows up). Directory
    mtimes are not compared: the up-front writability probe (a temporary file created and removed) touches
    them without changing any result."""
    snap: dict[str, tuple] = {}
    for root in paths:
        if not root.exists():
            snap[str(root)] = ("absent",)
            continue
        for f in [root] if not root.is_dir() else [root, *sorted(root.rglob("*"))]:
            if f.is_file():
                st = f.stat()
                snap[str(f)] = (st.st_size, st.st_mtime_ns, hashlib.sha256(f.read_bytes()).hexdigest())
            else:
                snap[str(f)] = ("dir",)
    return snap


def touched(case: Case, w: dict[str, Path]) -> list[Path]:
    """What a failing command must leave as it was: every path it was given (outputs, models, data, configs;
    one that does not exist must not be created) and the case's declared results."""
    paths = [a for a in case.args(w) if isinstance(a, Path) and not str(a).startswith("/proc")]
    return sorted(set(paths + case.protect(w)))


def assert_one_line_error(r, match: str) -> None:
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr[-3000:]
    assert r.returncode == 2, f"exit {r.returncode}: {r.stderr[-2000:]}"
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].strip(), f"expected one line on stderr, got:\n{r.stderr}"
    assert match in lines[0], lines[0]
    assert lines[0].startswith("prunekit"), lines[0]  # `prunekit CMD: error: ...`
    assert ": error: " in lines[0], lines[0]


@pytest.fixture(scope="module")
def results(w, request) -> dict[str, tuple]:
    """Run the selected cases, three processes at a time, and record what each may touch before and after.
    Cases only read the shared inputs, so they can overlap. Each case is its own process, forked from one that
    imported torch and prunekit once (`cli_fork`: 64 fresh interpreters spent ~2 s of CPU each importing torch);
    `test_out_in_read_only_directory` runs a fresh `python -m prunekit`."""
    from cli_fork import run_many

    wanted = {it.callspec.params["case"].id for it in request.session.items
              if it.module is request.module and hasattr(it, "callspec") and "case" in it.callspec.params}
    cases = [c for c in CASES if c.id in wanted]
    before = {c.id: snapshot(touched(c, w)) for c in cases}
    tree_before = snapshot([w["root"]])

    runs = run_many([c.args(w) for c in cases], cwd=w["root"], env=ENV, workers=3, timeout=300)
    done = dict(zip([c.id for c in cases], runs, strict=True))
    out = {c.id: (done[c.id], before[c.id], snapshot(touched(c, w))) for c in cases}
    out["_tree"] = (tree_before, snapshot([w["root"]]))
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, results):
    r, before, after = results[case.id]
    assert_one_line_error(r, case.match)
    assert after == before, "an existing result (or input) was modified, or an output was created"


def test_failed_commands_leave_the_whole_tree_as_it_was(results):
    """Nothing anywhere under the shared directory changed while every case failed (cases run there)."""
    before, after = results["_tree"]
    assert after == before, sorted(set(after.items()) ^ set(before.items()))[:5]


def test_matrix_is_large_distinct_and_documented():
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)
    for cat in ("data/", "model/", "config/", "cli/"):
        assert sum(c.id.startswith(cat) for c in CASES) >= 5, cat
    doc = (Path(__file__).resolve().parents[1] / "docs" / "errors.md").read_text()
    assert not [c.id for c in CASES if c.match not in doc], "docs/errors.md lacks these messages"


def test_out_in_read_only_directory(w, tmp_path):
    """Also as root (CI): the directory is then immutable or a read-only bind mount, not just chmod 555."""
    from conftest import read_only_dir

    with read_only_dir(tmp_path / "ro") as how:
        r = run_cli_subprocess("surgery", "--model", w["model"], "--sparsity", "0.5", "--out", tmp_path / "ro" / "s",
                               env=ENV)
        assert_one_line_error(r, "cannot create output directory")
        assert not list((tmp_path / "ro").iterdir()), how


# --- inputs that are accepted on purpose ---------------------------------------------------------------


def test_rgb_folder_is_converted_for_a_grayscale_model(w, tmp_path):
    """A 1-channel model evaluated on RGB images: the images are converted to grayscale (like predict does),
    not refused; class folders named after the model's classes map onto its outputs."""
    folder = _images(tmp_path / "rgb", classes=("Bag", "Coat", "Sandal"), n=4, mode="RGB", size=(40, 32))
    rc, so, se = run_cli("eval", "--model", w["model"], "--data", "imagefolder", "--data-dir", folder, "--json",
                         "--device", "cpu")
    assert rc == 0, se
    assert json.loads(so)["n"] == 3  # one held-out image per class, converted to 1x28x28


def test_near_total_sparsity_is_clamped_to_one_channel_per_layer(w, tmp_path):
    """`surgery --sparsity 0.999999` never empties a layer: every pruned group keeps >= 1 channel
    (--min-channels, default 1), and the shrunk model still runs and matches the masked one."""
    rc, so, se = run_cli("surgery", "--model", w["model"], "--sparsity", "0.999999", "--round-to", "1",
                         "--out", tmp_path / "s", "--json")
    assert rc == 0, se
    from prunekit.saved import load

    model = load(tmp_path / "s").model
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.out_channels >= 1 for c in convs)
    assert min(c.out_channels for c in convs) == 1
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert np.isfinite(json.loads(so)["max_abs_diff"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda(w):
    rc, so, se = run_cli("eval", "--model", w["model"], "--device", "cuda")
    assert rc == 2 and len(se.strip().splitlines()) == 1 and "CUDA is not available" in se, se
