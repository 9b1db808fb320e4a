"""Model files that lie (issue 21): a saved model directory is checked against itself before anything is
allocated. The two reported cases (a layer with 10^9 output channels, a 60000x60000 input) fail in a fresh
process with one line and exit 2, in under a second beyond start-up, under an address-space limit that the
claimed sizes would exceed many times over."""

from __future__ import annotations

import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from prunekit.errors import PrunekitError
from prunekit.models import InputSpec, ModelSpec, load_model, save_model
from prunekit.models.validate import read_header

REPO = Path(__file__).resolve().parents[2]
AS_LIMIT = 6 << 30  # torch imports in ~3.5 GB; the lies below claim 29 GB to 29 TB


def spec(**kw) -> ModelSpec:
    return ModelSpec("mobilenet_v1", {"width": 0.25, "num_classes": 10, "in_channels": 1, "small_input": True, **kw},
                     InputSpec([28, 28], 1, [0.286], [0.353]), [f"c{i}" for i in range(10)])


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("validate") / "model"
    s = spec()
    torch.manual_seed(0)
    save_model(s.build(), d, s)
    return d


def edited(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    doc = json.loads((dst / "model.json").read_text())
    edit(doc)
    (dst / "model.json").write_text(json.dumps(doc))
    return dst


def run_limited(*args, env: dict | None = None) -> tuple[subprocess.CompletedProcess, float, int]:
    """``python -m prunekit ARGS`` under RLIMIT_AS; returns (result, CPU seconds, peak RSS in bytes), both of that
    child alone (wait4). CPU time, not wall time: on a shared machine a process may wait seconds for a core."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))

    e = {k: v for k, v in os.environ.items() if k != "PRUNEKIT_MAX_MEMORY"}
    e.update({"OMP_NUM_THREADS": "1", **(env or {})})
    with tempfile.TemporaryFile("w+") as so, tempfile.TemporaryFile("w+") as se:
        p = subprocess.Popen([sys.executable, "-m", "prunekit", *map(str, args)], stdout=so, stderr=se, env=e,
                             preexec_fn=limit)
        _, status, usage = os.wait4(p.pid, 0)
        seconds = usage.ru_utime + usage.ru_stime
        p.returncode = os.waitstatus_to_exitcode(status)
        so.seek(0)
        se.seek(0)
        r = subprocess.CompletedProcess(p.args, p.returncode, so.read(), se.read())
    return r, seconds, usage.ru_maxrss * 1024


@pytest.fixture(scope="module")
def baseline() -> tuple[float, int]:
    """Start-up of a fresh `prunekit` process (imports torch): CPU time of the best of two `--version` runs."""
    runs = [run_limited("--version") for _ in range(2)]
    assert all(r.returncode == 0 for r, _, _ in runs)
    return min(s for _, s, _ in runs), max(rss for _, _, rss in runs)


def assert_refused_fast(r, seconds, rss, baseline, match: str) -> None:
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.returncode == 2, f"exit {r.returncode}: {r.stderr[-2000:]}"
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and ": error: " in lines[0], r.stderr
    assert match in lines[0], lines[0]
    assert seconds - baseline[0] < 1.0, f"{seconds:.2f} s CPU vs {baseline[0]:.2f} s for start-up"
    # the claimed sizes are 29 GB and more; the process stays within start-up + a few hundred MB
    assert rss < baseline[1] + (400 << 20), f"peak RSS {rss >> 20} MB vs {baseline[1] >> 20} MB at start-up"


@pytest.mark.parametrize("command", ["eval", "export"])
def test_layer_with_a_billion_channels_is_refused_before_allocating(saved, tmp_path, baseline, command):
    m = edited(saved, tmp_path / "m", lambda d: d["layers"]["blocks.0.pw.conv"].update(out_channels=10**9))
    extra = ["--out", tmp_path / "x.onnx"] if command == "export" else []
    r, s, rss = run_limited(command, "--model", m, *extra)
    assert_refused_fast(r, s, rss, baseline, "layer 'blocks.0.pw.conv': out_channels must be positive integer(s) "
                                             "<= 65536, got 1000000000")
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("command", ["eval", "export", "predict"])
def test_huge_input_size_is_refused_before_allocating(saved, tmp_path, baseline, command):
    from PIL import Image

    m = edited(saved, tmp_path / "m", lambda d: d["input"].update(size=[60000, 60000]))
    Image.new("L", (28, 28)).save(tmp_path / "x.png")
    args = {"eval": ["eval", "--model", m], "export": ["export", "--model", m, "--out", tmp_path / "x.onnx"],
            "predict": ["predict", tmp_path / "x.png", "--model", m]}[command]
    r, s, rss = run_limited(*args)
    assert_refused_fast(r, s, rss, baseline, "input.size must be at most 4096 pixels per side, got [60000, 60000]")


def test_lie_within_the_limits_is_caught_on_meta(saved, tmp_path, baseline):
    """A 65536x65536 classifier (16 GiB, within the per-layer cap) is built on the meta device and compared with
    the weights file's header: the error names the tensor, nothing is allocated."""
    m = edited(saved, tmp_path / "m", lambda d: d["layers"]["classifier"].update(in_features=65536,
                                                                                 out_features=65536))
    r, s, rss = run_limited("eval", "--model", m)
    assert_refused_fast(r, s, rss, baseline, "'classifier.weight' has shape [10, 256], the architecture expects "
                                             "[65536, 65536]")


def test_input_within_the_limits_but_beyond_memory_is_refused(saved, tmp_path, baseline):
    """A 4096x4096 input is allowed by the limits, but one image needs ~25 GiB of activations: refused by the
    estimate (against --max-memory 2G, below the 6 GiB address-space limit, so the message does not depend on the
    machine)."""
    m = edited(saved, tmp_path / "m", lambda d: d["input"].update(size=[4096, 4096]))
    r, s, rss = run_limited("--max-memory", "2G", "summary", "--model", m)
    assert_refused_fast(r, s, rss, baseline, "running one 1x4096x4096 input")
    assert "of memory but only 2.0 GiB is available (--max-memory)" in r.stderr


def test_library_call_is_fast_and_allocates_nothing(address_space_cap, saved, tmp_path):
    m = edited(saved, tmp_path / "m", lambda d: d["layers"]["classifier"].update(in_features=65536,
                                                                                 out_features=65536))
    t0 = time.perf_counter()
    with pytest.raises(PrunekitError, match="classifier.weight"):
        load_model(m)
    assert time.perf_counter() - t0 < 1.0


# --- every size-like field of model.json ----------------------------------------------------------------


@pytest.mark.parametrize("mutate,msg", [
    (lambda d: d["layers"]["blocks.0.pw.conv"].update(out_channels=65537), "out_channels must be positive"),
    (lambda d: d["layers"]["blocks.0.pw.conv"].update(in_channels=True), "in_channels must be positive"),
    (lambda d: d["layers"]["blocks.1.dw.conv"].update(groups=3), "not divisible by groups 3"),
    (lambda d: d["layers"]["blocks.0.pw.bn"].update(num_features=2**40), "num_features must be positive"),
    (lambda d: d["layers"]["classifier"].update(out_features=-5), "out_features must be positive"),
    (lambda d: d["layers"].update(x=[1, 2]), "layer 'x' must be a mapping"),
    (lambda d: d["kwargs"].update(num_classes=10**7), "kwargs.num_classes must be between 1 and 1,000,000"),
    (lambda d: d["kwargs"].update(in_channels=5), "kwargs.in_channels must be between 1 and 4"),
    (lambda d: d["kwargs"].update(width=float("inf")), "kwargs.width must be a finite number"),
    (lambda d: d["kwargs"].update(bn_eps=json.loads("[" * 9 + "1e-5" + "]" * 9)), "nested more than 8 levels"),
    (lambda d: d["input"].update(size=[28, 4097]), "input.size must be at most 4096"),
    (lambda d: d["input"].update(channels=5, mean=[0.5] * 5, std=[0.5] * 5), "input.channels must be at most 4"),
    (lambda d: d["input"].update(resize=5000), "input.resize must be at most 4096"),
    (lambda d: d.update(class_names=["c"] * 1_000_001), "'class_names' must hold 1 to 1,000,000 names"),
    (lambda d: d.update(class_names=["x" * 1001] + ["c"] * 9), "longer than 1000 characters"),
    (lambda d: d.update(tensors={"w": [-1]}), "tensors.w must be a list"),
    (lambda d: d.update(extra={"pruning": {"input_shape": [1, 60000, 60000]}}), "extra.pruning.input_shape"),
    (lambda d: d.update(stats={"x": json.loads("[" * 40 + "]" * 40)}), "nested more than 32 levels"),
])
def test_size_like_fields_are_bounded(address_space_cap, saved, tmp_path, mutate, msg):
    m = edited(saved, tmp_path / "m", mutate)
    with pytest.raises(PrunekitError, match=msg.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("+", r"\+")):
        load_model(m)


def test_deep_and_oversized_json_files(saved, tmp_path):
    m = shutil.copytree(saved, tmp_path / "deep")
    (m / "model.json").write_text("[" * 10000 + "]" * 10000)
    with pytest.raises(PrunekitError, match="nested too deeply"):
        load_model(m)
    (m / "model.json").write_text(" " * ((64 << 20) + 1))
    with pytest.raises(PrunekitError, match="larger than 64 MiB"):
        load_model(m)


# --- the weights file's header ----------------------------------------------------------------------------


def _rewrite_header(path: Path, edit) -> None:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    edit(header)
    new = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n:])


@pytest.mark.parametrize("edit,msg", [
    (lambda h: h["classifier.weight"].update(data_offsets=[0, 10**12]), "claims bytes"),
    (lambda h: h["classifier.weight"].update(shape=[10, 2**30]), "claims bytes"),
    (lambda h: h["classifier.weight"].update(dtype="F99"), "bad header entry for tensor 'classifier.weight'"),
    (lambda h: h.update(extra={"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}), "overlap or leave gaps"),
])
def test_lying_safetensors_header(address_space_cap, saved, tmp_path, edit, msg):
    m = shutil.copytree(saved, tmp_path / "m")
    _rewrite_header(m / "model.safetensors", edit)
    with pytest.raises(PrunekitError, match=msg):
        load_model(m)


def test_header_length_beyond_the_file(saved, tmp_path):
    m = shutil.copytree(saved, tmp_path / "m")
    raw = (m / "model.safetensors").read_bytes()
    (m / "model.safetensors").write_bytes(struct.pack("<Q", 2**60) + raw[8:])
    with pytest.raises(PrunekitError, match="header length 1152921504606846976 exceeds the file"):
        load_model(m)


def test_dtype_mismatch_names_the_tensor(tmp_path):
    s = spec()
    model = s.build()
    sd = model.state_dict()
    sd["stem.conv.weight"] = sd["stem.conv.weight"].half()
    save_model(model, tmp_path, s, state_dict=sd)
    assert read_header(tmp_path / "model.safetensors")["stem.conv.weight"].dtype == "F16"
    with pytest.raises(PrunekitError, match="'stem.conv.weight' is F16, the architecture expects F32"):
        load_model(tmp_path)


@pytest.mark.parametrize("edit, msg", [
    (lambda sd: sd.update({"stem.conv.weight": sd["stem.conv.weight"][:, :, :2]}), r"'stem.conv.weight' has shape"),
    (lambda sd: sd.update({"stem.conv.weight": sd["stem.conv.weight"].half()}), r"'stem.conv.weight' is F16"),
    (lambda sd: sd.pop("stem.conv.weight"), r"missing \['stem.conv.weight'\]"),
])
def test_loaded_tensors_are_checked_when_meta_cannot_build(tmp_path, monkeypatch, edit, msg):
    """The architecture cannot always be built on ``meta``: then the loaded tensors get the header's check."""
    from prunekit.models import validate

    s = spec()
    model = s.build()
    sd = model.state_dict()
    edit(sd)
    save_model(model, tmp_path, s, state_dict=sd)
    monkeypatch.setattr(validate, "meta_architecture", lambda *a, **k: None)
    with pytest.raises(PrunekitError, match=msg):
        load_model(tmp_path)


def test_valid_directories_still_load(saved, tmp_path):
    """Validation accepts what save_model writes, including shrunk layers and torchvision models."""
    model, s = load_model(saved)
    assert s.input.size == [28, 28]
    tv = ModelSpec("torchvision:resnet18", {"num_classes": 4}, InputSpec([32, 32], 3))
    save_model(tv.build(), tmp_path / "tv", tv)
    load_model(tmp_path / "tv")


# --- deployment metadata --------------------------------------------------------------------------------


def _deploy_doc():
    from prunekit.deploy.metadata import DeployMeta

    return DeployMeta.from_spec(spec(), "onnx").to_dict()


@pytest.mark.parametrize("mutate,msg", [
    (lambda d: d["input"].update(size=[60000, 60000]), "input.size must be at most 4096"),
    (lambda d: d["input"].update(channels=9, mean=[0.5] * 9, std=[0.5] * 9), "input.channels must be at most 4"),
    (lambda d: d.update(class_names=["c"] * 1_000_001), "must hold 1 to 1,000,000 names"),
    (lambda d: d["kwargs"].update(num_classes=2**40), "kwargs.num_classes"),
    (lambda d: d.update(opset=10**9), "opset must be an integer in 1..100"),
    (lambda d: d.update(info=[1]), "'info' must be a mapping"),
    (lambda d: d.update(input=[28, 28]), "'input' must be a mapping"),
    (lambda d: d.update(arch="x" * 201), "'arch' must be a string of 1 to 200"),
])
def test_deployment_metadata_is_bounded(mutate, msg):
    from prunekit.deploy.metadata import DeployMeta

    d = _deploy_doc()
    mutate(d)
    with pytest.raises(PrunekitError, match=msg.replace("[", r"\[").replace("(", r"\(")):
        DeployMeta.from_dict(d, "m.onnx.json")
    with pytest.raises(PrunekitError, match="nested too deeply"):
        DeployMeta.from_json("[" * 5000 + "]" * 5000, "m.onnx metadata")


def test_runtime_refuses_a_batch_that_cannot_fit(monkeypatch, tmp_path):
    """A deployed model's metadata claims a 4096x4096 input: the estimate from its architecture (built on meta)
    refuses a predict batch that would not fit, before any image is decoded."""
    from prunekit.deploy.metadata import DeployMeta
    from prunekit.inference.runtime import Runtime, deploy_activations

    d = _deploy_doc()
    d["input"]["size"] = [4096, 4096]
    meta = DeployMeta.from_dict(d, "m.onnx.json")
    a = deploy_activations(meta)
    assert a.exact and a.total > 10 * (1 << 30)  # ~25 GiB of activations per image
    rt = Runtime(tmp_path / "m.onnx", meta, "onnxruntime")
    monkeypatch.setenv("PRUNEKIT_MAX_MEMORY", "4G")
    with pytest.raises(PrunekitError, match=r"predict with .*m.onnx \(batch 64 of 1x4096x4096 inputs\) needs about"):
        rt.check_memory(64, "predict")
    rt.check_memory(1, "predict")  # one image fits in 4 GiB (peak ~1 GiB)


def test_pruning_plan_input_shape_is_checked(address_space_cap, tmp_path, monkeypatch):
    """A masked model's plan is traced at its recorded input shape: a lie there is refused before tracing."""
    from prunekit import saved as api
    from prunekit.pruning import OneShot, PruningConfig, prune_

    s = spec()
    m = s.build()
    prune_(m, PruningConfig(schedule=OneShot(0.5)), (1, 28, 28)).step(0)
    api.save(m, tmp_path / "masked", s)
    doc = json.loads((tmp_path / "masked" / "model.json").read_text())
    doc["extra"]["pruning"]["input_shape"] = [1, 4096, 4096]
    (tmp_path / "masked" / "model.json").write_text(json.dumps(doc))
    monkeypatch.setenv("PRUNEKIT_MAX_MEMORY", "2G")
    with pytest.raises(PrunekitError, match=r"tracing the saved pruning plan \(one 1x4096x4096 input\) needs about"):
        api.load(tmp_path / "masked")
