import json

import pytest
import torch

from prunekit import saved
from prunekit.errors import PrunekitError
from prunekit.models import InputSpec, ModelSpec, create_model, load_model, save_model


def spec(**kw):
    return ModelSpec("mobilenet_v1", {"width": 0.25, "num_classes": 10, "in_channels": 1, "small_input": True, **kw},
                     InputSpec([28, 28], 1, [0.286], [0.353]), [f"c{i}" for i in range(10)])


def _forbid_unpickling(monkeypatch) -> None:
    """Every way to unpickle (the pickle module, torch.load and torch's own weights-only unpickler) fails."""
    import pickle

    import torch._weights_only_unpickler as wou
    import torch.serialization

    def fail(*a, **k):
        raise AssertionError("unpickled")

    for mod, names in ((pickle, ("load", "loads", "Unpickler")), (torch, ("load",)),
                       (torch.serialization, ("load", "_load")), (wou, ("load", "Unpickler"))):
        for n in names:
            monkeypatch.setattr(mod, n, fail)


def test_the_unpickling_guard_catches_torch_load(tmp_path, monkeypatch):
    from prunekit.io import torch_load, torch_save

    torch_save(tmp_path / "c.pt", {"w": torch.zeros(1)})
    _forbid_unpickling(monkeypatch)
    with pytest.raises(Exception, match="unpickled"):
        torch_load(tmp_path / "c.pt")


def test_roundtrip_is_exact_and_never_unpickles(tmp_path, monkeypatch):
    s = spec()
    m = s.build().eval()
    save_model(m, tmp_path / "m", s)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.json", "model.safetensors"]
    _forbid_unpickling(monkeypatch)
    m2, s2 = load_model(tmp_path / "m")
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(m(x), m2(x))
    assert s2.class_names == s.class_names and s2.input.mean == [0.286]
    doc = json.loads((tmp_path / "m" / "model.json").read_text())
    assert doc["schema_version"] == 1 and doc["layers"]["blocks.0.pw.conv"]["out_channels"] == 16


def test_shrunk_layers_are_rebuilt_from_json(tmp_path):
    from prunekit.surgery import shrink

    s = spec()
    m = s.build().eval()
    res = shrink(m, (1, 28, 28), {"blocks.3.pw.conv": list(range(10))})
    saved.save(res.model, tmp_path / "s", s)
    loaded = saved.load(tmp_path / "s")
    assert m.blocks[3].pw.conv.out_channels == 64
    assert loaded.model.blocks[3].pw.conv.out_channels == 64 - 10
    assert loaded.model.blocks[4].dw.conv.groups == 54
    x = torch.randn(3, 1, 28, 28)
    assert torch.allclose(loaded.model(x), res.model.eval()(x))


@pytest.mark.parametrize("mutate,msg", [
    (lambda d: d.update(schema_version=99), "unsupported schema_version"),
    (lambda d: d.update(surprise=1), "unknown field 'surprise'"),
    (lambda d: d.update(arch="resnet9000"), "unknown arch"),
    (lambda d: d.update(format="other"), "not a prunekit model"),
    (lambda d: d["layers"]["blocks.0.pw.conv"].update(out_channels=15), "does not match"),
    (lambda d: d["layers"].update({"nope.conv": {"type": "Conv2d"}}), "does not exist"),
    (lambda d: d["input"].update(channels=0), "input.channels"),
    (lambda d: d["input"].update(mean=[0.1, 0.2]), "input.mean"),
])
def test_bad_model_json_is_rejected_clearly(tmp_path, mutate, msg):
    s = spec()
    save_model(s.build(), tmp_path, s)
    doc = json.loads((tmp_path / "model.json").read_text())
    mutate(doc)
    (tmp_path / "model.json").write_text(json.dumps(doc))
    with pytest.raises(PrunekitError, match=msg):
        load_model(tmp_path)


def test_truncated_weights_and_missing_files(tmp_path):
    s = spec()
    save_model(s.build(), tmp_path, s)
    w = tmp_path / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(PrunekitError, match="corrupt or not a safetensors"):
        load_model(tmp_path)
    with pytest.raises(PrunekitError, match="model directory not found"):
        load_model(tmp_path / "nope")
    with pytest.raises(PrunekitError, match="pickled checkpoints are not loaded"):
        (tmp_path / "x.pt").write_bytes(b"\x80\x04")
        saved.resolve(str(tmp_path / "x.pt"))


def test_torchvision_model_dir_roundtrip(tmp_path):
    s = ModelSpec("torchvision:resnet18", {"num_classes": 4}, InputSpec([32, 32], 3))
    m = create_model(s.arch, **s.kwargs).eval()
    save_model(m, tmp_path, s)
    m2, _ = load_model(tmp_path)
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(m(x), m2(x))
