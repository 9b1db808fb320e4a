"""Safe loading: crafted pickles never run, whatever command or file name they arrive under.

Every payload, when unpickled, creates a marker file (``pathlib.Path.touch`` through ``__reduce__``; the first
test proves that the payloads are live). Each case runs the real CLI in a fresh process and asserts exit code
2, one line on stderr, no traceback and no marker. A source scan checks that ``src/prunekit`` has no
unpickling, no ``eval``/``exec`` and no dynamic import of user-controlled names.
"""

from __future__ import annotations

import ast
import io
import json
import pathlib
import pickle
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image

SRC = Path(__file__).resolve().parents[1] / "src" / "prunekit"
ENV = {"OMP_NUM_THREADS": "1"}


class Touch:
    """Unpickling this calls ``pathlib.Path.touch(marker)``: code execution with a visible effect."""

    def __init__(self, marker: Path):
        self.marker = Path(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def evil_pickle(marker: Path) -> bytes:
    return pickle.dumps({"model": Touch(marker), "step": 1})


def evil_torch_zip(marker: Path) -> bytes:
    """A real ``torch.save`` archive (zip + data.pkl) holding the payload next to plain tensors."""
    buf = io.BytesIO()
    torch.save({"model": {"w": torch.zeros(2)}, "optimizer": {}, "step": 1, "rng": {}, "fingerprint": {},
                "payload": Touch(marker)}, buf)
    return buf.getvalue()


def _model_dir(directory: Path, masked: bool = False) -> Path:
    from prunekit.config import ModelCfg
    from prunekit.data import load_data
    from prunekit.saved import save
    from prunekit.steps import build_model

    torch.manual_seed(0)
    model, spec = build_model(ModelCfg(width=0.25), load_data("bundled"))
    if masked:
        from prunekit.pruning import OneShot, PruningConfig, prune_

        pruner = prune_(model, PruningConfig(schedule=OneShot(0.5)), (1, 28, 28))
        pruner.step(0)
    save(model, directory, spec)
    return directory


def _exported_program(path: Path) -> Path:
    m = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten()).eval()
    ep = torch.export.export(m, (torch.randn(2, 1, 8, 8),))
    torch.export.save(ep, str(path), extra_files={"prunekit.json": "{}"})
    return path


def _rewrite_zip(src: Path, dst: Path, replace: Callable[[str, bytes], bytes]) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, replace(info.filename, zin.read(info.filename)))
    return dst


@dataclass
class Case:
    id: str
    args: Callable[[dict], list]
    match: str


@pytest.fixture(scope="module")
def s(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("security")
    d: dict = {"root": root, "markers": root / "markers"}
    d["markers"].mkdir()
    mk = lambda name: d["markers"] / name  # noqa: E731 - one marker per payload file

    d["model"] = _model_dir(root / "model")
    d["image"] = root / "shirt.png"
    Image.new("L", (28, 28), 128).save(d["image"])
    for name in ("evil.pt", "evil.pth", "evil.ckpt", "evil.bin", "evil.pkl", "evil"):
        (root / name).write_bytes(evil_torch_zip(mk(name)))
    (root / "raw.pt").write_bytes(evil_pickle(mk("raw.pt")))
    (root / "evil.onnx").write_bytes(evil_pickle(mk("evil.onnx")))
    # TorchScript / ExportedProgram suffixes
    (root / "raw.ts").write_bytes(evil_pickle(mk("raw.ts")))
    (root / "zip.ts").write_bytes(evil_torch_zip(mk("zip.ts")))
    (root / "raw.pt2").write_bytes(evil_pickle(mk("raw.pt2")))
    good = _exported_program(root / "good.pt2")
    _rewrite_zip(good, root / "inputs.pt2", lambda n, b: evil_torch_zip(mk("inputs.pt2"))
                 if n.endswith("sample_inputs/model.pt") else b)
    _rewrite_zip(good, root / "inputs_raw.pt2", lambda n, b: evil_pickle(mk("inputs_raw.pt2"))
                 if n.endswith("sample_inputs/model.pt") else b)

    def use_pickle(name: str, data: bytes) -> bytes:
        if name.endswith("model_weights_config.json"):
            cfg = json.loads(data)
            for v in cfg["config"].values():
                v["use_pickle"] = True
            return json.dumps(cfg).encode()
        if name.endswith("weights/weight_0"):
            return evil_torch_zip(mk("weights.pt2"))
        return data

    _rewrite_zip(good, root / "weights.pt2", use_pickle)
    # a model directory whose weights (or masks) are a pickle under the safetensors name
    d["pickled_weights"] = shutil.copytree(d["model"], root / "pickled_weights")
    (d["pickled_weights"] / "model.safetensors").write_bytes(evil_torch_zip(mk("pickled_weights")))
    d["pickled_masks"] = _model_dir(root / "pickled_masks", masked=True)
    assert (d["pickled_masks"] / "masks.safetensors").is_file()
    (d["pickled_masks"] / "masks.safetensors").write_bytes(evil_pickle(mk("pickled_masks")))
    # a run directory whose checkpoint is the payload
    for run in ("train_run", "prune_run", "train_run_raw"):
        (root / run).mkdir()
        payload = evil_pickle if run.endswith("raw") else evil_torch_zip  # plain pickle: torch also warns
        (root / run / "checkpoint.pt").write_bytes(payload(mk(run)))
    # model.json whose arch / kwargs try to name code
    doc = json.loads((d["model"] / "model.json").read_text())
    touch = f"__import__('pathlib').Path('{mk('arch_expr')}').touch()"
    for name, edit in {"arch_os_system": {"arch": "os.system"},
                       "arch_tv_import": {"arch": "torchvision:__import__"},
                       "arch_tv_dotted": {"arch": "torchvision:os.system"},
                       "arch_colon": {"arch": "builtins:eval"},
                       "arch_expr": {"arch": touch},
                       "kwargs_act": {"kwargs": {**doc["kwargs"], "act": touch}}}.items():
        shutil.copytree(d["model"], root / name)
        (root / name / "model.json").write_text(json.dumps({**doc, **edit}))
        d[name] = root / name
    return d


def _r(name: str) -> Callable[[dict], Path]:
    return lambda s: s["root"] / name


PICKLED = "pickled checkpoints are not loaded"
CASES = [
    # a pickled checkpoint given as --model, to every command that takes one
    Case("eval", lambda s: ["eval", "--model", _r("evil.pt")(s)], PICKLED),
    Case("summary", lambda s: ["summary", "--model", _r("evil.pth")(s)], PICKLED),
    Case("plan", lambda s: ["plan", "--model", _r("evil.ckpt")(s)], PICKLED),
    Case("surgery", lambda s: ["surgery", "--model", _r("evil.bin")(s), "--sparsity", "0.5",
                               "--out", s["root"] / "surgery_out"], PICKLED),
    Case("export", lambda s: ["export", "--model", _r("evil.pkl")(s), "--out", s["root"] / "x.onnx"], PICKLED),
    Case("predict", lambda s: ["predict", s["image"], "--model", _r("evil.pt")(s)], PICKLED),
    Case("bench", lambda s: ["bench", "--model", _r("evil.pt")(s)], "bench takes model directories"),
    Case("prune", lambda s: ["prune", "--model", _r("raw.pt")(s), "--out", s["root"] / "prune_out"], PICKLED),
    Case("quantize", lambda s: ["quantize", "--model", _r("evil.pt")(s)], "takes an fp32 ONNX file"),
    Case("train-init", lambda s: ["train", "--init", _r("evil.pt")(s), "--out", s["root"] / "init_out",
                                  "--device", "cpu"], "expected a model directory"),
    Case("import-timm", lambda s: ["import", "--from", "timm", _r("evil.pth")(s), "--out", s["root"] / "imp_out"],
         "refusing to load"),
    Case("no-suffix", lambda s: ["eval", "--model", _r("evil")(s)], "expected a model directory"),
    Case("pickle-named-onnx", lambda s: ["predict", s["image"], "--model", _r("evil.onnx")(s)],
         "truncated, corrupt or not ONNX"),
    # TorchScript and ExportedProgram files
    Case("ts-raw-pickle", lambda s: ["predict", s["image"], "--model", _r("raw.ts")(s)],
         "not a readable TorchScript archive"),
    Case("ts-torch-save-zip", lambda s: ["predict", s["image"], "--model", _r("zip.ts")(s)],
         "not a readable TorchScript archive"),
    Case("pt2-raw-pickle", lambda s: ["predict", s["image"], "--model", _r("raw.pt2")(s)], "not a zip archive"),
    Case("pt2-pickled-sample-inputs", lambda s: ["predict", s["image"], "--model", _r("inputs.pt2")(s)],
         "refusing to load"),
    Case("pt2-plain-pickle-sample-inputs", lambda s: ["predict", s["image"], "--model", _r("inputs_raw.pt2")(s)],
         "refusing to load"),
    Case("pt2-pickled-weights", lambda s: ["predict", s["image"], "--model", _r("weights.pt2")(s)],
         "refusing to load"),
    # pickles under the safetensors names of a model directory
    Case("safetensors-weights", lambda s: ["eval", "--model", s["pickled_weights"]],
         "corrupt or not a safetensors file"),
    Case("safetensors-masks", lambda s: ["summary", "--model", s["pickled_masks"]],
         "corrupt or not a safetensors file"),
    # a pickle as the checkpoint that --resume continues
    Case("resume-train", lambda s: ["train", "--data", "bundled", "--width", "0.25", "--epochs", "1",
                                    "--device", "cpu", "--out", s["root"] / "train_run", "--resume"],
         "refusing to load checkpoint"),
    Case("resume-train-plain-pickle", lambda s: ["train", "--data", "bundled", "--width", "0.25", "--epochs", "1",
                                                 "--device", "cpu", "--out", s["root"] / "train_run_raw", "--resume"],
         "refusing to load checkpoint"),
    Case("resume-prune", lambda s: ["prune", "--model", s["model"], "--epochs", "1", "--device", "cpu",
                                    "--out", s["root"] / "prune_run", "--resume"], "refusing to load checkpoint"),
    # model.json naming code instead of a registered architecture
    Case("arch-os-system", lambda s: ["summary", "--model", s["arch_os_system"]], "unknown arch 'os.system'"),
    Case("arch-torchvision-import", lambda s: ["summary", "--model", s["arch_tv_import"]],
         "unknown torchvision model 'torchvision:__import__'"),
    Case("arch-torchvision-dotted", lambda s: ["eval", "--model", s["arch_tv_dotted"]],
         "unknown torchvision model"),
    Case("arch-module-colon", lambda s: ["plan", "--model", s["arch_colon"]], "unknown arch 'builtins:eval'"),
    Case("arch-python-expression", lambda s: ["summary", "--model", s["arch_expr"]], "unknown arch"),
    Case("kwargs-python-expression", lambda s: ["summary", "--model", s["kwargs_act"]], "act must be"),
]


@pytest.fixture(scope="module")
def results(s, request) -> dict:
    """Each case in its own process, forked from one that imported torch and prunekit once (`cli_fork`)."""
    from cli_fork import run_many

    wanted = {it.callspec.params["case"].id for it in request.session.items
              if it.module is request.module and hasattr(it, "callspec") and "case" in it.callspec.params}
    cases = [c for c in CASES if c.id in wanted]
    out = run_many([c.args(s) for c in cases], cwd=s["root"], env=ENV, workers=3, timeout=300)
    return dict(zip([c.id for c in cases], out, strict=True))


def test_payloads_are_live(tmp_path):
    """Control: unpickled without protection, each payload form does create its marker."""
    m1, m2 = tmp_path / "m1", tmp_path / "m2"
    pickle.loads(evil_pickle(m1))
    torch.load(io.BytesIO(evil_torch_zip(m2)), weights_only=False)
    assert m1.exists() and m2.exists()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_crafted_input_is_refused_without_running_code(case, s, results):
    r = results[case.id]
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr[-3000:]
    assert r.returncode == 2, f"exit {r.returncode}: {r.stderr[-2000:]}"
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and ": error: " in lines[0], r.stderr
    assert case.match in lines[0], lines[0]
    assert not list(s["markers"].iterdir()), f"code ran: {sorted(p.name for p in s['markers'].iterdir())}"


def test_every_payload_file_was_exercised(s):
    """Every crafted file in the fixture is named by some case (no payload silently left untested)."""
    root = s["root"]
    args = " ".join(str(a) for c in CASES for a in c.args(s))
    files = [p for p in root.iterdir() if p.is_file() and p.name not in ("shirt.png", "good.pt2")]
    files += [p.parent for p in root.glob("*/checkpoint.pt")]
    assert all(str(p) in args for p in files), [p.name for p in files if str(p) not in args]


# --- the source tree ------------------------------------------------------------------------------------

# Dynamic imports whose module name comes from a fixed table in the code itself, not from user input.
IMPORT_ALLOW = {
    ("cli.py", "build_parser"),  # importlib.import_module(f".commands.{module}") over the COMMANDS list
    ("__init__.py", "__getattr__"),  # lazy exports: f".{_EXPORTS[name]}", a fixed dict
}
# Loaders that unpickle only after a check, or only what prunekit produced in memory.
LOADER_ALLOW = {
    ("deploy/torchscript.py", "torchscript_bytes", "torch.jit.load"),  # reloads our own bytes for verification
    ("deploy/torchscript.py", "load_torchscript", "torch.jit.load"),  # TorchScript unpickler: no Python globals
    ("deploy/torchscript.py", "exported_program_bytes", "torch.export.load"),  # our own bytes
    ("deploy/torchscript.py", "load_exported_program", "torch.export.load"),  # after check_pt2_safe(path)
}


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    parts.append(node.id if isinstance(node, ast.Name) else "<expr>")  # `f(x).eval()` is a method, not eval(
    return ".".join(reversed(parts))


def _calls(path: Path):
    """(function name, dotted callee, call node) for every call in a module."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    parent_fn: dict[ast.AST, str] = {}

    def walk(node: ast.AST, fn: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else fn
            parent_fn[child] = name
            walk(child, name)

    walk(tree, "<module>")
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield parent_fn.get(node, "<module>"), _dotted(node.func), node


UNSAFE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "marshal", "shelve", "cloudpickle", "joblib"}


def scan(path: Path, rel: str) -> list[str]:
    """Unsafe loading / dynamic code in one source file (allowlists above)."""
    problems = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                 [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        problems += [f"{rel}:{node.lineno}: imports {n}" for n in names if n.split(".")[0] in UNSAFE_MODULES]
    for fn, callee, node in _calls(path):
        kw = {k.arg: k.value for k in node.keywords}
        where = f"{rel}:{node.lineno} ({fn})"
        if callee in ("eval", "exec", "compile", "__import__", "builtins.eval", "builtins.exec"):
            problems.append(f"{where}: {callee}(")
        elif callee in ("importlib.import_module", "import_module"):
            if (path.name, fn) not in IMPORT_ALLOW:
                problems.append(f"{where}: importlib.import_module( on a computed name")
        elif callee.split(".")[-1] in ("load", "loads", "Unpickler") and callee.split(".")[0] in UNSAFE_MODULES:
            problems.append(f"{where}: {callee}(")
        elif callee == "torch.load":
            wo = kw.get("weights_only")
            if not (isinstance(wo, ast.Constant) and wo.value is True):
                problems.append(f"{where}: torch.load( without weights_only=True")
        elif callee in ("torch.jit.load", "torch.export.load", "torch.package.PackageImporter"):
            if (rel, fn, callee) not in LOADER_ALLOW:
                problems.append(f"{where}: {callee}(")
        elif callee in ("yaml.load", "yaml.unsafe_load", "yaml.full_load"):
            problems.append(f"{where}: {callee}( (use yaml.safe_load)")
        elif callee in ("np.load", "numpy.load"):
            ap = kw.get("allow_pickle")
            if ap is not None and not (isinstance(ap, ast.Constant) and ap.value is False):
                problems.append(f"{where}: np.load(allow_pickle=...)")
        elif callee in ("os.system", "os.popen") or callee.startswith("subprocess."):
            problems.append(f"{where}: {callee}(")
        elif callee == "getattr" and node.args and _dotted(node.args[0]) in ("torchvision", "torchvision.models",
                                                                            "builtins", "os", "sys", "importlib"):
            problems.append(f"{where}: getattr({_dotted(node.args[0])}, ...) on a module")
    return problems


def test_source_has_no_unsafe_loading_or_dynamic_code():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 20
    problems = [p for path in files for p in scan(path, path.relative_to(SRC).as_posix())]
    assert not problems, "\n".join(problems)
    # the allowlisted torch.export.load is only reached after the archive check
    src = (SRC / "deploy" / "torchscript.py").read_text()
    body = src[src.index("def load_exported_program"):]
    assert body.index("check_pt2_safe(path)") < body.index("torch.export.load(")


def test_the_scan_catches_what_it_should(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import importlib, pickle, torch, yaml\n"
                   "def f(p, name, s):\n"
                   "    torch.load(p)\n"
                   "    torch.load(p, weights_only=False)\n"
                   "    pickle.loads(s)\n"
                   "    eval(s)\n"
                   "    exec(s)\n"
                   "    importlib.import_module(name)\n"
                   "    yaml.load(s)\n"
                   "    torch.jit.load(p)\n"
                   "    getattr(torchvision.models, name)\n"
                   "    model.eval()\n"
                   "    torch.load(p, weights_only=True)\n")
    found = scan(bad, "bad.py")
    assert len(found) == 10, found  # the import of pickle + 9 calls; model.eval() and the safe load pass
