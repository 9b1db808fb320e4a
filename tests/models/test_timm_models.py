"""``timm:NAME`` references: the registry, configs, the CLI, saved model directories, weight import, and what
happens without timm installed (a one-line error; everything else still works)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, run_cli
from prunekit.config import parse_config
from prunekit.errors import PrunekitError
from prunekit.models import create_model, default_input
from prunekit.saved import load

pytestmark = pytest.mark.usefixtures("one_thread")
needs_timm = pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm is not installed")


def _random_timm(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    """A timm model with random BN statistics (so that loading them wrongly shows in the logits)."""
    import timm

    torch.manual_seed(seed)
    m = timm.create_model(name, pretrained=False, **kwargs)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.running_mean.copy_(torch.randn(mod.num_features, generator=g) * 0.2)
                mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
                mod.bias.copy_(torch.randn(mod.num_features, generator=g) * 0.2)
    return m.eval()


@needs_timm
def test_registry_builds_timm_models_and_reads_their_input():
    m = create_model("timm:resnet18", num_classes=10, in_channels=1).eval()
    assert m.conv1.in_channels == 1 and m(torch.zeros(1, 1, 32, 32)).shape == (1, 10)
    assert default_input("timm:tf_efficientnet_b3") == {"size": [300, 300], "channels": 3, "resize": 332,
                                                        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert default_input("timm:inception_v3")["size"] == [299, 299]
    with pytest.raises(PrunekitError, match=r"unknown timm model 'resnet1800' \(did you mean 'resnet18'\?\)"):
        create_model("timm:resnet1800")
    with pytest.raises(PrunekitError, match="pretrained weights are not downloaded.*prunekit import --from timm"):
        create_model("timm:resnet18", pretrained=True)
    with pytest.raises(PrunekitError, match="timm:resnet18: cannot build it"):
        create_model("timm:resnet18", not_an_argument=1)


@needs_timm
def test_config_accepts_timm_arch_and_names_a_wrong_one():
    cfg = parse_config({"model": {"arch": "timm:mobilenetv3_small_100"}})
    assert cfg.model.arch == "timm:mobilenetv3_small_100"
    with pytest.raises(PrunekitError, match=r"model.arch: unknown timm model 'mobilenetv3_smal_100'"):
        parse_config({"model": {"arch": "timm:mobilenetv3_smal_100"}})
    from prunekit.data import load_data
    from prunekit.steps import build_model

    bundle = load_data("bundled")
    model, spec = build_model(cfg.model, bundle)  # sized for the data: 1 channel, its classes
    assert spec.arch == "timm:mobilenetv3_small_100" and spec.kwargs == {"num_classes": 10, "in_channels": 1}
    with torch.no_grad():
        assert model.eval()(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


@needs_timm
def test_cli_plan_and_surgery_on_a_timm_model_and_its_saved_directory(tmp_path):
    rc, out, err = run_cli("plan", "--model", "timm:lcnet_050", "--layers", "all", "--image-size", "64", "--json")
    assert rc == 0, err
    plan = json.loads(out)
    assert plan["selected"] >= 15 and not any("batch_norm" in g["reason"] for g in plan["groups"])
    rc, out, err = run_cli("surgery", "--model", "timm:lcnet_050", "--sparsity", "0.4", "--layers", "all",
                           "--image-size", "64", "--out", tmp_path / "m", "--json")
    assert rc == 0, err
    res = json.loads(out)
    assert res["max_abs_diff"] <= 1e-4 and res["params_after"] < 0.6 * res["params_before"]
    doc = json.loads((tmp_path / "m" / "model.json").read_text())
    assert doc["arch"] == "timm:lcnet_050" and doc["layers"]["bn1"]["type"] == "BatchNormAct2d"
    assert doc["input"]["mean"] == [0.485, 0.456, 0.406] and doc["input"]["resize"] == 256
    loaded = load(tmp_path / "m")  # rebuilt with timm, resized from model.json
    assert sum(p.numel() for p in loaded.model.parameters()) == res["params_after"]
    rc, out, err = run_cli("summary", "--model", tmp_path / "m", "--json")
    assert rc == 0 and json.loads(out)["params"] == res["params_after"], err


def test_without_timm_a_timm_reference_is_a_one_line_error_and_the_rest_works(tmp_path):
    code = """
import sys
sys.modules["timm"] = None  # as if timm were not installed
import prunekit, prunekit.cli, prunekit.steps, prunekit.graph
from prunekit.models import create_model
from prunekit.graph import DependencyGraph
assert "timm" not in [m for m in sys.modules if sys.modules[m] is not None]
DependencyGraph(create_model("torchvision:resnet18", num_classes=4), (3, 32, 32))  # works without timm
sys.exit(prunekit.cli.main(sys.argv[1:]))
"""
    for args in (["plan", "--model", "timm:resnet18"], ["train", "--arch", "timm:resnet18", "--out", str(tmp_path)]):
        r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO, timeout=300)
        err = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2, r.stderr[-2000:]
        assert len(err) == 1 and "timm:resnet18 needs timm, which is not installed" in err[0], r.stderr
        assert "Traceback" not in r.stderr


def test_importing_prunekit_does_not_import_timm():
    code = "import sys, prunekit, prunekit.cli, prunekit.steps, prunekit.graph; print('timm' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr


# --- weight import ------------------------------------------------------------------------------------------


@needs_timm
def test_import_any_timm_architecture_from_safetensors(tmp_path):
    from safetensors.torch import save_file

    tm = _random_timm("resnet18", seed=3, num_classes=7)
    save_file({k: v.contiguous() for k, v in tm.state_dict().items()}, str(tmp_path / "resnet18.safetensors"))
    rc, out, err = run_cli("import", "--from", "timm", tmp_path / "resnet18.safetensors", "--arch", "timm:resnet18",
                           "--out", tmp_path / "m", "--json")
    assert rc == 0, err
    info = json.loads(out)
    ver = info["source"]["verification"]
    assert info["arch"] == "timm:resnet18" and info["kwargs"] == {"num_classes": 7}
    assert ver["max_abs_diff"] <= 1e-4 and "load_checkpoint" in ver["against"]
    loaded = load(tmp_path / "m")
    assert loaded.spec.arch == "timm:resnet18" and loaded.spec.input.size == [224, 224]
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, got = tm(x), loaded.model(x)
    assert float(ref.abs().max()) > 0.1 and torch.allclose(got, ref, atol=1e-5)
    # and it prunes like any other model directory
    rc, out, err = run_cli("surgery", "--model", tmp_path / "m", "--sparsity", "0.3", "--layers", "all",
                           "--image-size", "64", "--out", tmp_path / "small", "--json")
    assert rc == 0 and json.loads(out)["max_abs_diff"] <= 1e-4, err


@needs_timm
def test_import_reads_checkpoints_and_refuses_weights_of_another_architecture(tmp_path):
    from safetensors.torch import save_file

    tm = _random_timm("mobilenetv3_small_100", seed=1)
    torch.save({"state_dict_ema": tm.state_dict(), "epoch": 3}, tmp_path / "ckpt.pth")
    from prunekit.models.timm_import import import_timm_model

    model, spec = import_timm_model(tmp_path / "ckpt.pth", "timm:mobilenetv3_small_100")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(model(x), tm(x), atol=1e-5)
    assert spec.extra["source"]["checkpoint_key"] == "state_dict_ema" and len(spec.class_names) == 1000
    save_file({k: v.contiguous() for k, v in tm.state_dict().items()}, str(tmp_path / "w.safetensors"))
    with pytest.raises(PrunekitError, match="the weights do not fit the architecture"):
        import_timm_model(tmp_path / "w.safetensors", "timm:mobilenetv3_large_100")
    for args, msg in ((["--arch", "timm:resnet18", "--from", "keras"], "needs --from timm"),
                      (["--arch", "timm:resnet18", "--from", "timm", "--width", "1.0"], "only apply to --arch mobilenet_v1"),
                      (["--arch", "timm:resnet1800", "--from", "timm"], "unknown timm model 'resnet1800'")):
        rc, _, err = run_cli("import", tmp_path / "w.safetensors", *args, "--out", tmp_path / "x")
        assert rc == 2 and msg in err, err


@needs_timm
@pytest.mark.slow
def test_efficientnet_b0_surgery_and_export_from_the_cli(tmp_path):
    """The issue's headline: >= 40% fewer parameters on timm's EfficientNet-B0, verified, and it exports."""
    rc, out, err = run_cli("surgery", "--model", "timm:efficientnet_b0", "--sparsity", "0.4", "--layers", "all",
                           "--out", tmp_path / "m", "--json")
    assert rc == 0, err
    res = json.loads(out)
    assert res["max_abs_diff"] <= 1e-4 and 1 - res["params_after"] / res["params_before"] >= 0.4
    rc, out, err = run_cli("export", "--model", tmp_path / "m", "--out", tmp_path / "m.onnx")
    assert rc == 0 and (tmp_path / "m.onnx").stat().st_size > 1e6, err
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        ref = load(tmp_path / "m").model(torch.from_numpy(x)).numpy()
    assert np.abs(sess.run(None, {sess.get_inputs()[0].name: x})[0] - ref).max() <= 1e-4
