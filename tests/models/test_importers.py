"""Importing pretrained MobileNet V1 weights from Keras and timm.

Source models are built here with random weights (random BatchNorm statistics too, so padding, epsilon and
layout mistakes show up in the logits), saved in every supported file layout, imported, and compared with
the source framework's own logits. Then the imported model goes through one-shot pruning + surgery, top-5
prediction on real image files, and `prunekit eval` on ImageNet-style folders (class subsets by name and by
WordNet id).
"""

from __future__ import annotations

import json
import os
import sys
import zipfile
from pathlib import Path

if "keras" not in sys.modules:
    os.environ["KERAS_BACKEND"] = "torch"

import h5py
import keras
import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from conftest import REPO, run_cli
from prunekit.data import imagenet_classes, imagenet_wnids
from prunekit.data.classes import class_index_map
from prunekit.data.imagefolder import load_image
from prunekit.errors import PrunekitError
from prunekit.models import MobileNetV1, create_model, importers
from prunekit.models.importers import import_keras, import_timm
from prunekit.saved import load

TOL = 1e-4
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:keras")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Two threads on a busy 2-core machine are slower than one for these small batches."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --- source models ---------------------------------------------------------------------------------


def _randomize_keras(m, seed: int):
    """Random BN statistics and a larger classifier, so logits are O(1..10) and sensitive to every detail."""
    rng = np.random.default_rng(seed)
    for layer in m.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.get_weights()[0].shape
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.2, n), rng.normal(0, 0.2, n),
                               rng.uniform(0.05, 1.0, n)])
        elif layer.name == "conv_preds":
            k, b = layer.get_weights()
            layer.set_weights([k * 20, rng.normal(0, 0.5, b.shape)])


def _keras_logits(m, x_nhwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return np.asarray(keras.ops.convert_to_numpy(m(x_nhwc, training=False)))


def _classic_h5(m, path: Path) -> Path:
    """A keras-applications / Keras 2 `save_weights` file (like mobilenet_1_0_224_tf.h5): `layer_names`,
    per-layer `weight_names` such as `conv_dw_1/depthwise_kernel:0`, datasets at `conv1/conv1/kernel:0`."""
    roles = {"bn": ["gamma", "beta", "moving_mean", "moving_variance"], "dw": ["depthwise_kernel"],
             "conv": ["kernel", "bias"]}
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([layer.name.encode() for layer in m.layers])
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.1.2"
        for layer in m.layers:
            g = f.create_group(layer.name)
            ws = layer.get_weights()
            kind = ("bn" if isinstance(layer, keras.layers.BatchNormalization) else
                    "dw" if isinstance(layer, keras.layers.DepthwiseConv2D) else "conv")
            names = [f"{layer.name}/{r}:0" for r in roles[kind][:len(ws)]]
            g.attrs["weight_names"] = np.array([n.encode() for n in names])
            for n, w in zip(names, ws, strict=True):
                g.create_dataset(n, data=w)
    return path


def _strip_layer_names(h5: Path) -> None:
    """Remove the `name` attributes older Keras 3 releases did not write (the importer then uses the order)."""
    with h5py.File(h5, "r+") as f:
        def visit(_name, obj):
            if isinstance(obj, h5py.Group) and "name" in obj.attrs:
                del obj.attrs["name"]
        f.visititems(visit)


def _unnamed_archive(src: Path, dst: Path, tmp: Path) -> Path:
    """A copy of a .keras archive whose model.weights.h5 has no layer names (config.json gives them)."""
    with zipfile.ZipFile(src) as z:
        members = {n: z.read(n) for n in z.namelist()}
    (tmp / "w.h5").write_bytes(members["model.weights.h5"])
    _strip_layer_names(tmp / "w.h5")
    members["model.weights.h5"] = (tmp / "w.h5").read_bytes()
    with zipfile.ZipFile(dst, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    return dst


@pytest.fixture(scope="module")
def keras_src(tmp_path_factory):
    """Keras MobileNet alpha 0.25 (1000 classes) and alpha 0.5 (1001 classes), logits on the same images."""
    out = tmp_path_factory.mktemp("keras_src")
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (2, 224, 224, 3)).astype(np.float32)
    src = {}
    for alpha, classes in ((0.25, 1000), (0.5, 1001)):
        m = keras.applications.MobileNet(input_shape=(224, 224, 3), alpha=alpha, weights=None, classes=classes,
                                         classifier_activation=None)
        _randomize_keras(m, seed=int(alpha * 100))
        src[alpha] = {"model": m, "x": x, "ref": _keras_logits(m, x), "dir": out}
    return src


@pytest.fixture(scope="module")
def keras_files(keras_src):
    """The alpha-0.25 model in every layout the importer reads."""
    from keras.src.legacy.saving import legacy_h5_format

    m, d = keras_src[0.25]["model"], keras_src[0.25]["dir"]
    files = {"keras3_weights": d / "m.weights.h5", "keras_archive": d / "m.keras", "legacy_model": d / "m.h5",
             "legacy_weights": d / "legacy_weights.h5", "classic": d / "mobilenet_2_5_224_tf.h5"}
    m.save_weights(files["keras3_weights"])
    m.save(files["keras_archive"])
    m.save(files["legacy_model"])  # Keras 2 style full-model h5 (model_config + model_weights)
    with h5py.File(files["legacy_weights"], "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, m)
    _classic_h5(m, files["classic"])
    inp = keras.Input((224, 224, 3))  # MobileNet nested inside a user's model (transfer-learning style)
    with h5py.File(d / "nested.h5", "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, keras.Model(inp, m(inp)))
    files["legacy_nested"] = d / "nested.h5"
    files["keras3_weights_unnamed"] = d / "unnamed.weights.h5"
    files["keras3_weights_unnamed"].write_bytes(files["keras3_weights"].read_bytes())
    _strip_layer_names(files["keras3_weights_unnamed"])
    files["keras_archive_unnamed"] = _unnamed_archive(files["keras_archive"], d / "unnamed.keras", d)
    return files


def _ours(model: torch.nn.Module, x_nhwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))).numpy()


# --- Keras -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["keras3_weights", "keras_archive", "legacy_model", "legacy_weights", "classic",
                                 "keras3_weights_unnamed", "keras_archive_unnamed", "legacy_nested"])
def test_keras_files_reproduce_keras_logits(keras_src, keras_files, fmt):
    src = keras_src[0.25]
    assert np.abs(src["ref"]).max() > 1.0  # logits large enough for the comparison to mean something
    model, spec = import_keras(keras_files[fmt], verify=False)
    diff = np.abs(_ours(model, src["x"]) - src["ref"]).max()
    assert diff <= TOL, (fmt, diff)
    assert spec.arch == "mobilenet_v1"
    assert spec.kwargs == {"width": 0.25, "num_classes": 1000, "in_channels": 3, "small_input": False,
                           "dropout": 1e-3, "act": "relu6", "padding": "tf", "bn_eps": 1e-3}
    assert (spec.input.size, spec.input.resize, spec.input.mean, spec.input.std) == ([224, 224], 256, [0.5] * 3,
                                                                                     [0.5] * 3)
    assert spec.class_names == imagenet_classes()
    src_info = spec.extra["source"]
    assert src_info["framework"] == "keras" and src_info["width"] == 0.25 and len(src_info["sha256"]) == 64
    assert src_info["format"] == {"keras3_weights": "keras3-weights-h5", "keras_archive": "keras-archive",
                                  "legacy_model": "keras-legacy-model-h5", "legacy_weights": "keras-legacy-weights-h5",
                                  "classic": "keras-legacy-weights-h5", "keras3_weights_unnamed": "keras3-weights-h5",
                                  "keras_archive_unnamed": "keras-archive", "legacy_nested": "keras-legacy-weights-h5"}[fmt]


def test_keras_width_050_with_1001_classes_verified_against_keras(keras_src):
    src = keras_src[0.5]
    path = src["dir"] / "w050.weights.h5"
    src["model"].save_weights(path)
    model, spec = import_keras(path)  # width auto-detected, verified inside against keras.applications
    ver = spec.extra["source"]["verification"]
    assert ver["against"].startswith("keras ") and ver["max_abs_diff"] <= TOL and ver["size"] == [224, 224]
    assert np.abs(_ours(model, src["x"]) - src["ref"]).max() <= TOL
    assert spec.kwargs["width"] == 0.5 and spec.kwargs["num_classes"] == 1001
    assert spec.class_names[0] == "background" and spec.class_names[1:] == imagenet_classes()
    assert model.stem.conv.out_channels == 16 and model.blocks[12].pw.conv.out_channels == 512
    assert isinstance(model.stem.pad, torch.nn.ZeroPad2d) and model.stem.bn.eps == 1e-3
    # --width is checked, not trusted
    with pytest.raises(PrunekitError, match=r"width 0.75 does not match the weights \(the file has width 0.5"):
        import_keras(path, width=0.75, verify=False)


def test_keras_reference_is_sensitive_to_padding_and_eps(keras_src, keras_files):
    """The comparison would catch symmetric padding or PyTorch's BN epsilon (so the tolerance is meaningful)."""
    src = keras_src[0.25]
    model, spec = import_keras(keras_files["keras3_weights"], verify=False)
    for change in ({"padding": "symmetric"}, {"bn_eps": 1e-5}):
        other = create_model("mobilenet_v1", **{**spec.kwargs, **change})
        other.load_state_dict(model.state_dict())
        assert np.abs(_ours(other, src["x"]) - src["ref"]).max() > 100 * TOL, change


def test_keras_without_keras_verifies_what_it_can(keras_files, monkeypatch):
    monkeypatch.setattr(importers, "_import_keras_module", lambda: (None, "keras is not importable (test)"))
    _, spec = import_keras(keras_files["classic"])
    ver = spec.extra["source"]["verification"]
    assert ver["skipped"] == "keras is not importable (test)" and "shapes" in ver["checked"]


# --- timm ------------------------------------------------------------------------------------------


def _timm_model(name: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = timm.create_model(name, pretrained=False)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                n = mod.num_features
                mod.weight.uniform_(0.5, 1.5, generator=g)
                mod.bias.normal_(0, 0.2, generator=g)
                mod.running_mean.normal_(0, 0.2, generator=g)
                mod.running_var.uniform_(0.05, 1.0, generator=g)
                assert mod.weight.shape == (n,)
        m.classifier.weight.mul_(20)
    return m.eval()


@pytest.mark.parametrize("name,width,fmt", [("mobilenetv1_100", 1.0, "safetensors"),
                                            ("mobilenetv1_125", 1.25, "pth")])
def test_timm_reproduces_timm_logits(tmp_path, name, width, fmt):
    tm = _timm_model(name, seed=3)
    if fmt == "safetensors":
        path = tmp_path / f"{name}.safetensors"
        save_file(tm.state_dict(), str(path))
    else:  # a training checkpoint, saved under DDP: wrapped and prefixed
        path = tmp_path / f"{name}.pth"
        torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in tm.state_dict().items()}}, path)
    model, spec = import_timm(path)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, ours = tm(x), model(x)
    assert ref.abs().max() > 1.0
    assert (ours - ref).abs().max().item() <= TOL
    ver = spec.extra["source"]["verification"]
    assert ver["max_abs_diff"] <= TOL and name in ver["against"]
    assert spec.kwargs["width"] == width and spec.kwargs["padding"] == "symmetric" and spec.kwargs["bn_eps"] == 1e-5
    cfg = timm.models.get_pretrained_cfg(name).to_dict()
    assert spec.input.mean == list(cfg["mean"]) and spec.input.std == list(cfg["std"])
    assert spec.input.resize == 256 and spec.class_names == imagenet_classes()
    assert spec.extra["source"]["timm_model"] == name
    if width == 1.0:
        assert sum(p.numel() for p in model.parameters()) == 4_231_976  # same network as prunekit's default
    else:
        assert spec.extra["source"]["checkpoint_key"] == "state_dict"


def test_timm_hub_config_sets_normalisation(tmp_path):
    """A Hugging Face hub download (model.safetensors + config.json): architecture and pretrained_cfg."""
    tm = timm.create_model("mobilenetv1_100", pretrained=False).eval()
    save_file(tm.state_dict(), str(tmp_path / "model.safetensors"))
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "mobilenetv1_100", "num_classes": 1000,
                                                      "pretrained_cfg": {"mean": mean, "std": std}}))
    _, spec = import_timm(tmp_path / "model.safetensors", width=1.0)
    assert spec.input.mean == mean and spec.input.std == std
    assert spec.extra["source"]["normalization_from"] == "config.json pretrained_cfg"


# --- errors ----------------------------------------------------------------------------------------


def _one_line_error(*args) -> str:
    rc, out, err = run_cli(*args)
    assert rc == 2, (rc, out, err)
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_import_errors(tmp_path, keras_files):
    out = tmp_path / "out"
    text = tmp_path / "notes.h5"
    text.write_text("not weights")
    assert "not a Keras weights file" in _one_line_error("import", "--from", "keras", text, "--out", out)
    assert "file not found" in _one_line_error("import", "--from", "keras", tmp_path / "nope.h5", "--out", out)
    err = _one_line_error("import", "--from", "keras", keras_files["classic"], "--arch", "resnet50", "--out", out)
    assert "cannot import arch 'resnet50'" in err
    err = _one_line_error("import", "--from", "keras", keras_files["classic"], "--width", "0.5", "--out", out)
    assert "width 0.5 does not match the weights (the file has width 0.25" in err
    # a truncated file (layer missing) and a no-top file
    for drop, expect in (("conv_pw_7", "missing layer 'conv_pw_7'"), ("conv_preds", "no classifier layer")):
        bad = tmp_path / f"no_{drop}.h5"
        bad.write_bytes(keras_files["classic"].read_bytes())
        with h5py.File(bad, "r+") as f:
            del f[drop]
            f.attrs["layer_names"] = np.array([n for n in f.attrs["layer_names"] if n.decode() != drop])
        assert expect in _one_line_error("import", "--from", "keras", bad, "--out", out)
    # timm: a model with a head conv, a foreign state dict, a pickle that is more than tensors
    save_file(timm.create_model("mobilenetv1_100h").state_dict(), str(tmp_path / "h.safetensors"))
    assert "cannot express" in _one_line_error("import", "--from", "timm", tmp_path / "h.safetensors", "--out", out)
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.bin")
    err = _one_line_error("import", "--from", "timm", tmp_path / "other.bin", "--out", out)
    assert "not a timm MobileNet V1 state dict" in err
    torch.save({"state_dict": {"w": torch.zeros(1)}, "cfg": Path("x")}, tmp_path / "pickled.pth")
    assert "refusing to load" in _one_line_error("import", "--from", "timm", tmp_path / "pickled.pth", "--out", out)
    assert "unsupported timm weights file" in _one_line_error("import", "--from", "timm", keras_files["classic"],
                                                              "--out", out)
    assert not (out / "model.json").exists()


# --- import -> surgery -> top-5 -> eval on image folders -----------------------------------------------


def _images(d: Path, n: int, seed: int) -> list[Path]:
    """Photos-ish JPEG/PNG files of assorted sizes (smooth colour fields plus noise)."""
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        h, w = int(rng.integers(240, 330)), int(rng.integers(240, 330))
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        base = np.stack([np.sin(xx * rng.uniform(2, 12) + rng.uniform(0, 6)) for _ in range(3)], -1)
        img = np.clip((base * 0.5 + 0.5) * 255 * rng.uniform(0.3, 1, 3) + rng.normal(0, 20, (h, w, 3)), 0, 255)
        p = d / f"img{i}.{'jpg' if i % 2 else 'png'}"
        Image.fromarray(img.astype(np.uint8)).save(p)
        paths.append(p)
    return paths


def _predict(model, spec, paths) -> torch.Tensor:
    x = np.stack([load_image(p, 3, spec.input.size, spec.input.resize) for p in paths])
    x = torch.from_numpy(x).float() / 255
    x = (x - torch.tensor(spec.input.mean)[:, None, None]) / torch.tensor(spec.input.std)[:, None, None]
    with torch.no_grad():
        return model.eval()(x)


@pytest.fixture(scope="module")
def imported_keras_dir(keras_files, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("imported") / "mnv1_keras"
    rc, so, se = run_cli("import", "--from", "keras", keras_files["classic"], "--arch", "mobilenet_v1", "--out", out)
    assert rc == 0, se
    assert "matches keras" in so and "width 0.25, 1000 classes" in so
    return out


def test_import_prune_surgery_top5(imported_keras_dir, keras_src, tmp_path):
    from keras.applications.mobilenet import preprocess_input

    from prunekit.pruning import OneShot, PruningConfig, prune_

    dense = load(imported_keras_dir)
    assert dense.pruner is None and dense.spec.extra["source"]["verification"]["max_abs_diff"] <= TOL
    paths = _images(tmp_path / "imgs", 3, seed=5)
    logits = _predict(dense.model, dense.spec, paths)
    # the spec's preprocessing is Keras' own: same crop, preprocess_input, same top-5
    crops = np.stack([load_image(p, 3, [224, 224], 256).transpose(1, 2, 0) for p in paths]).astype(np.float32)
    ref = _keras_logits(keras_src[0.25]["model"], preprocess_input(crops))
    assert np.abs(logits.numpy() - ref).max() <= TOL
    assert torch.equal(logits.topk(5).indices, torch.from_numpy(ref).topk(5).indices)

    shrunk_dir = tmp_path / "half"
    rc, so, se = run_cli("surgery", "--model", imported_keras_dir, "--sparsity", "0.5", "--out", shrunk_dir)
    assert rc == 0, se
    shrunk = load(shrunk_dir)
    n_dense = sum(p.numel() for p in dense.model.parameters())
    n_shrunk = sum(p.numel() for p in shrunk.model.parameters())
    assert n_shrunk < 0.6 * n_dense
    assert shrunk.model.blocks[12].pw.conv.out_channels == 128 and shrunk.spec.class_names == imagenet_classes()
    assert shrunk.spec.input == dense.spec.input and shrunk.spec.extra["source"] == dense.spec.extra["source"]
    # the same one-shot pruning applied in memory (masks) gives the shrunk model's logits and top-5
    masked = load(imported_keras_dir).model
    pruner = prune_(masked, PruningConfig(schedule=OneShot(0.5)), (3, 224, 224))
    pruner.step(0)
    want, got = _predict(masked, dense.spec, paths), _predict(shrunk.model, shrunk.spec, paths)
    assert (want - got).abs().max().item() <= TOL
    top5 = got.topk(5).indices
    assert torch.equal(top5, want.topk(5).indices)
    labels = [[shrunk.spec.class_names[i] for i in row] for row in top5.tolist()]
    assert all(len(set(row)) == 5 for row in labels)


def _labelled_folder(root: Path, model, spec, folder_name, others=(7, 123)) -> dict:
    """ROOT/{train,val}/<class>/ with 6 images: two filed under the model's own top-1 class among those that
    can be a folder (``folder_name`` returns None for the others: a 1001-class model's background has no
    WordNet id), two each under the classes ``others``. Returns what `prunekit eval` must report (computed
    here from the model itself). Which class an untrained model ranks first differs between CPUs, so the
    labels never assume it is a usable one."""
    paths = _images(root.parent / f"_{root.name}_src", 6, seed=11)
    logits = _predict(model, spec, paths)
    usable = torch.tensor([folder_name(c) is not None for c in range(logits.shape[1])])
    own = logits[:2].masked_fill(~usable, float("-inf")).argmax(1).tolist()
    labels = [own[0], own[1], others[0], others[0], others[1], others[1]]
    for p, c in zip(paths, labels, strict=True):
        for split in ("train", "val"):
            d = root / split / folder_name(c)
            d.mkdir(parents=True, exist_ok=True)
            (d / p.name).write_bytes(p.read_bytes())
    y = torch.tensor(labels)
    top5 = logits.topk(5).indices
    return {"n": len(paths), "top1": 100 * (logits.argmax(1) == y).float().mean().item(),
            "top5": 100 * (top5 == y[:, None]).any(1).float().mean().item()}


def _eval(model_dir: Path, data_dir: Path) -> dict:
    rc, so, se = run_cli("eval", "--model", model_dir, "--data", "imagefolder", "--data-dir", data_dir, "--json",
                         "--device", "cpu")
    assert rc == 0, se
    return json.loads(so)


def _check_eval(model_dir: Path, data_dir: Path, want: dict) -> None:
    got = _eval(model_dir, data_dir)
    assert got["n"] == want["n"]
    assert got["top1"] == pytest.approx(want["top1"], abs=1e-3) and got["top5"] == pytest.approx(want["top5"], abs=1e-3)
    # the images filed under their own (usable) prediction are in the top-5: the class mapping is exercised
    assert want["top5"] >= 100 / 3


def test_eval_imagenet_folders_by_wnid_and_by_name(imported_keras_dir, keras_src, tmp_path):
    # 1000-class model, official ImageNet layout: a few folders named by WordNet id
    dense = load(imported_keras_dir)
    wnids = imagenet_wnids()
    _check_eval(imported_keras_dir, tmp_path / "wnid",
                _labelled_folder(tmp_path / "wnid", dense.model, dense.spec, lambda c: wnids[c]))
    # 1001-class model (background first): folders named by class name (spaces as underscores), and by wnid
    path = tmp_path / "w050.weights.h5"
    keras_src[0.5]["model"].save_weights(path)
    rc, so, se = run_cli("import", "--from", "keras", path, "--arch", "mobilenet_v1", "--out", tmp_path / "m1001",
                         "--no-verify")
    assert rc == 0, se
    m1001 = load(tmp_path / "m1001")
    names = m1001.spec.class_names
    twice = {n for n in names if names.count(n) > 1}  # ("cardigan"): a folder by that name matches no one class
    _check_eval(tmp_path / "m1001", tmp_path / "names",
                _labelled_folder(tmp_path / "names", m1001.model, m1001.spec,
                                 lambda c: None if names[c] in twice else names[c].replace(" ", "_")))

    def wnid_1001(c: int) -> str | None:
        return wnids[c - 1] if c > 0 else None  # background has no wnid

    _check_eval(tmp_path / "m1001", tmp_path / "wnid1001",
                _labelled_folder(tmp_path / "wnid1001", m1001.model, m1001.spec, wnid_1001))
    # data that matches nothing: a clear one-line error
    _images(tmp_path / "odd" / "foo", 2, seed=1)
    _images(tmp_path / "odd" / "bar", 2, seed=2)
    err = _one_line_error("eval", "--model", imported_keras_dir, "--data", "imagefolder", "--data-dir",
                          tmp_path / "odd", "--device", "cpu")
    assert "has 1000 classes but the imagefolder data has 2" in err


def test_class_index_map_rules():
    names = imagenet_classes()
    wnids = imagenet_wnids()
    assert len(wnids) == 1000 and wnids[0] == "n01440764" and wnids == sorted(wnids)
    assert class_index_map(["goldfish", "great_white_shark", "Tench"], names) == ([1, 2, 0], "name")
    assert class_index_map([wnids[5], wnids[999]], names) == ([5, 999], "imagenet-wnid")
    assert class_index_map([wnids[5], wnids[999]], ["background", *names]) == ([6, 1000], "imagenet-wnid")
    assert class_index_map(["goldfish", "unicorn"], names) is None
    assert class_index_map([wnids[0]], ["a", "b"]) is None
    assert class_index_map(["a", "a_"], ["a", "b"]) is None  # never maps two folders onto one class
    assert class_index_map(["x", "y"], ["x", "x", "y"]) is None  # ambiguous name


def test_relabel_in_memory_and_streamed_splits(tmp_path):
    from prunekit.data import DataBundle, TensorSplit
    from prunekit.data.classes import relabel
    from prunekit.data.imagefolder import FolderSplit

    paths = _images(tmp_path, 2, seed=0)
    mem = TensorSplit(torch.zeros(3, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 1, 1]))
    stream = FolderSplit([(paths[0], 1), (paths[1], 0)], 3, [224, 224], 256)
    b = DataBundle("imagefolder", mem, stream, ["goldfish", "tench"], 3, [224, 224], [0.5] * 3, [0.5] * 3)
    mapping, how = class_index_map(b.class_names, imagenet_classes())
    r = relabel(b, mapping, imagenet_classes())
    assert (mapping, how) == ([1, 0], "name") and r.num_classes == 1000
    assert r.train.labels.tolist() == [1, 0, 0]
    assert r.test.labels.tolist() == [0, 1] and [r.test[i][1] for i in range(2)] == [0, 1]
    assert tuple(r.test[0][0].shape) == (3, 224, 224)


def test_imagenet_config_validates():
    from prunekit.config import load_config

    cfg = load_config(REPO / "configs" / "imagenet_mobilenet_v1.yaml")
    assert cfg.model.arch == "mobilenet_v1" and cfg.model.init
    assert (cfg.data.name, cfg.data.image_size, cfg.data.resize) == ("imagefolder", 224, 256) and cfg.data.root
    assert cfg.prune.enabled and 0 < cfg.prune.final_sparsity < 1 and cfg.finetune.enabled
    assert cfg.prune.lr < cfg.train.lr  # fine-tuning a pretrained network: smaller steps


def test_mobilenet_v1_defaults_unchanged():
    m = MobileNetV1()
    assert sum(p.numel() for p in m.parameters()) == 4_231_976
    assert isinstance(m.stem.pad, torch.nn.Identity) and m.stem.bn.eps == 1e-5
