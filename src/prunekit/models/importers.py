"""Import pretrained MobileNet V1 weights from Keras and timm into prunekit's :class:`MobileNetV1`.

Keras (``keras.applications.MobileNet``, any width multiplier, 1000 or 1001 classes), read with h5py:

* classic keras-applications / Keras 2 files (``mobilenet_1_0_224_tf.h5``, ``save_weights`` and
  ``model.save`` to ``.h5``): one group per layer, datasets ``conv1/conv1/kernel:0``,
  ``conv_dw_1/conv_dw_1/depthwise_kernel:0``, ...;
* Keras 3 files: ``model.save_weights("x.weights.h5")`` (``layers/<class>_<n>/vars/<i>``) and ``.keras``
  zip archives holding ``model.weights.h5``.

The Keras network is rebuilt exactly: BatchNorm epsilon 1e-3, ReLU6, TF "same" padding on stride-2 layers
(``padding="tf"``: zero-pad right/bottom by one, as Keras does on even input sizes such as 224), the 1x1-conv
classifier ``conv_preds`` becomes ``classifier`` (an ``nn.Linear``). Preprocessing: scale to [-1, 1].

timm (``mobilenetv1_100``, ``mobilenetv1_125``, any ``_gen_mobilenet_v1`` width whose channels are
``int(c * width)``), from safetensors or a plain state dict (``torch.load(weights_only=True)``): the same
network with symmetric padding and BatchNorm epsilon 1e-5. ``mobilenetv1_100h`` adds a 1x1 head conv before
pooling that :class:`MobileNetV1` does not have, and is refused. Preprocessing: the model's
``pretrained_cfg`` mean/std (from a ``config.json`` next to the file, else timm's registry when timm is
installed, else the standard ImageNet values).

When the source framework is importable the imported model is checked against it on random images (max abs
logit difference <= 1e-4, scaled for logits above 100); the result is recorded under ``extra.source``.

>>> model, spec = import_keras("mobilenet_1_0_224_tf.h5")          # doctest: +SKIP
>>> save(model, "models/mnv1_keras", spec)                         # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.classes import IMAGENET_MEAN, IMAGENET_STD
from ..errors import PrunekitError, VerificationError
from .mobilenet_v1 import BLOCKS, MobileNetV1, scale_channels
from .serialization import InputSpec, ModelSpec

SOURCES = ("keras", "timm")
ARCHS = ("mobilenet_v1",)
IMAGE_SIZE = 224
RESIZE = 256
KERAS_BN_EPS = 1e-3
TIMM_BN_EPS = 1e-5
KERAS_DROPOUT = 1e-3
TIMM_STAGES = (1, 2, 2, 6, 2)  # timm groups the 13 depthwise-separable blocks into 5 stages
TOLERANCE = 1e-4
VERIFY_IMAGES = 2
MAX_ARCHIVE_MEMBER = 4 * 1024**3
_STANDARD_WIDTHS = (0.25, 0.35, 0.5, 0.75, 1.0, 1.25, 1.3, 1.4, 1.5, 1.75, 2.0)

__all__ = ["ARCHS", "SOURCES", "import_keras", "import_timm", "import_weights", "detect_width",
           "imagenet_class_names", "read_keras_layers"]


# --- shared ----------------------------------------------------------------------------------------


def import_weights(source: str, path: str | os.PathLike, **kwargs: Any) -> tuple[MobileNetV1, ModelSpec]:
    """Dispatch to :func:`import_keras` or :func:`import_timm` by ``source``."""
    if source == "keras":
        return import_keras(path, **kwargs)
    if source == "timm":
        return import_timm(path, **kwargs)
    raise PrunekitError(f"unknown import source '{source}'; valid: {', '.join(SOURCES)}")


def imagenet_class_names(num_classes: int) -> list[str] | None:
    """ImageNet-1k names for 1000 classes, ``["background", ...]`` for 1001 (TF-slim style), else None."""
    from ..data.classes import imagenet_classes

    if num_classes == 1000:
        return imagenet_classes()
    if num_classes == 1001:
        return ["background", *imagenet_classes()]
    return None


def detect_width(channels: Sequence[int], width: float | None = None, where: str = "file") -> float:
    """The width multiplier whose ``int(c * width)`` channel counts equal ``channels`` (stem, then the 13
    pointwise outputs). With ``width`` given, check it instead."""
    base = [32] + [c for c, _ in BLOCKS]

    def fits(w: float) -> bool:
        return [scale_channels(b, w) for b in base] == list(channels)

    found = f"stem {channels[0]}, last block {channels[-1]} channels"
    if width is not None:
        if not fits(width):
            guess = next((w for w in _candidates(channels) if fits(w)), None)
            hint = f" (the {where} has width {guess:g}: {found})" if guess else f" ({where}: {found})"
            raise PrunekitError(f"width {width:g} does not match the weights{hint}")
        return float(width)
    for w in _candidates(channels):
        if fits(w):
            return w
    raise PrunekitError(f"the {where}'s channel counts ({found}) do not follow MobileNet V1 with any width "
                        f"multiplier (int(c * width) for c = {base[0]}, {base[1]}, ..., {base[-1]})")


def _candidates(channels: Sequence[int]) -> list[float]:
    est = channels[-1] / 1024
    out = [w for w in _STANDARD_WIDTHS if abs(w - est) < 0.02]
    out += [round(est, 2), round(est, 3), round(est, 4), est, (channels[-1] + 0.5) / 1024]
    return [w for w in dict.fromkeys(out) if w > 0]


def _file_info(path: Path) -> dict[str, Any]:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"file": path.name, "sha256": h.hexdigest(), "bytes": path.stat().st_size}


def _check_path(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise PrunekitError(f"{what} file not found: {path}")
    if path.is_dir():
        raise PrunekitError(f"{path} is a directory; give the {what} weights file itself")
    return path


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        from ..errors import closest

        raise PrunekitError(f"cannot import arch '{arch}'{closest(arch, ARCHS)}: only {', '.join(ARCHS)} is supported "
                            "(and timm:NAME with --from timm)")


def _class_names(num_classes: int, class_names: Sequence[str] | None) -> list[str] | None:
    if class_names is not None:
        names = [str(n) for n in class_names]
        if len(names) != num_classes:
            raise PrunekitError(f"{len(names)} class names given but the classifier has {num_classes} outputs")
        return names
    return imagenet_class_names(num_classes)


def _build(width: float, num_classes: int, padding: str, bn_eps: float, dropout: float,
           state: dict[str, torch.Tensor], where: str) -> tuple[MobileNetV1, dict[str, Any]]:
    kwargs = {"width": width, "num_classes": num_classes, "in_channels": 3, "small_input": False,
              "dropout": dropout, "act": "relu6", "padding": padding, "bn_eps": bn_eps}
    model = MobileNetV1(**kwargs)
    expected = model.state_dict()
    for k, v in expected.items():
        if k not in state:
            raise PrunekitError(f"{where}: no weights for '{k}'")
        if tuple(state[k].shape) != tuple(v.shape):
            raise PrunekitError(f"{where}: '{k}' has shape {list(state[k].shape)}, width {width:g} with "
                                f"{num_classes} classes needs {list(v.shape)}")
        if state[k].is_floating_point() and not np.isfinite(state[k].numpy()).all():
            raise PrunekitError(f"{where}: '{k}' contains NaN or infinite values")
    model.load_state_dict({k: state[k].to(v.dtype) for k, v in expected.items()}, strict=True)
    return model.eval(), kwargs


def _tolerance(ref: np.ndarray) -> float:
    return TOLERANCE * max(1.0, float(np.abs(ref).max()) / 100.0)


def _compare(model: MobileNetV1, x_nchw: np.ndarray, ref: np.ndarray, against: str) -> dict[str, Any]:
    with torch.no_grad():
        ours = model.eval()(torch.from_numpy(x_nchw)).numpy()
    if ours.shape != ref.shape:
        raise VerificationError(f"imported model gives logits of shape {list(ours.shape)}, {against} gives "
                                f"{list(ref.shape)}")
    diff = float(np.abs(ours.astype(np.float64) - ref.astype(np.float64)).max())
    tol = _tolerance(ref)
    if not diff <= tol:
        raise VerificationError(f"imported model does not reproduce {against}: max abs logit difference {diff:.3g} "
                                f"> {tol:.3g}")
    return {"against": against, "images": int(x_nchw.shape[0]), "size": list(x_nchw.shape[2:]),
            "max_abs_diff": diff, "tolerance": tol}


def _spec(kwargs: dict[str, Any], mean: Sequence[float], std: Sequence[float], names: list[str] | None,
          source: dict[str, Any]) -> ModelSpec:
    inp = InputSpec([IMAGE_SIZE, IMAGE_SIZE], 3, [float(m) for m in mean], [float(s) for s in std],
                    resize=RESIZE).validate()
    return ModelSpec("mobilenet_v1", dict(kwargs), inp, names, {"source": source})


# --- Keras -----------------------------------------------------------------------------------------

# Keras weight names -> roles; Keras 2 names the depthwise kernel "depthwise_kernel", Keras 3 "kernel".
_ROLE_ALIASES = {"depthwise_kernel": "kernel"}
_K3_ROLES = {"conv2d": ["kernel", "bias"], "depthwise_conv2d": ["kernel", "bias"],
             "batch_normalization": ["gamma", "beta", "moving_mean", "moving_variance"]}
_BN_ROLES = ("gamma", "beta", "moving_mean", "moving_variance")


def _keras_layer_names() -> dict[str, list[str]]:
    """Weighted layers of keras.applications.MobileNet in build order, per Keras 3 storage class name."""
    convs = ["conv1"] + [f"conv_pw_{i}" for i in range(1, 14)] + ["conv_preds"]
    dws = [f"conv_dw_{i}" for i in range(1, 14)]
    bns = ["conv1_bn"] + [n for i in range(1, 14) for n in (f"conv_dw_{i}_bn", f"conv_pw_{i}_bn")]
    return {"conv2d": convs, "depthwise_conv2d": dws, "batch_normalization": bns}


def _h5py():
    try:
        import h5py
    except ImportError:
        raise PrunekitError("reading Keras files needs h5py (pip install h5py)") from None
    return h5py


def _decode(v: Any) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def read_keras_layers(path: str | os.PathLike) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """Read a Keras weights file into ``{layer_name: {role: array}}`` (roles: kernel, bias, gamma, beta,
    moving_mean, moving_variance) plus information about the file (format, Keras version)."""
    path = _check_path(path, "Keras")
    h5py = _h5py()
    config = None
    if zipfile.is_zipfile(path):
        data, config = _read_keras_archive(path)
        fmt, opener = "keras-archive", lambda: h5py.File(io.BytesIO(data), "r")
    elif h5py.is_hdf5(path):
        fmt, opener = None, lambda: h5py.File(path, "r")
    else:
        raise PrunekitError(f"{path}: not a Keras weights file (expected an HDF5 .h5 / .weights.h5 file or a "
                            ".keras archive)")
    try:
        with opener() as f:
            version = _decode(f.attrs.get("keras_version", "")) or None
            if isinstance(f.get("layers"), h5py.Group):
                layers = _read_keras3(f["layers"], config, path)
                fmt = fmt or "keras3-weights-h5"
            elif isinstance(f.get("model_weights"), h5py.Group):
                g = f["model_weights"]
                version = _decode(g.attrs.get("keras_version", "")) or version
                layers = _read_legacy(g, path)
                fmt = "keras-legacy-model-h5"
            elif "layer_names" in f.attrs:
                layers = _read_legacy(f, path)
                fmt = "keras-legacy-weights-h5"
            else:
                raise PrunekitError(f"{path}: HDF5 file without Keras weights (no 'layer_names', 'model_weights' or "
                                    "'layers'); is it a Keras file?")
    except PrunekitError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise PrunekitError(f"{path}: cannot read Keras weights ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''})") from None
    info = {"format": fmt, "keras_version": version}
    if config is not None:
        info["keras_model"] = config.get("config", {}).get("name") if isinstance(config, dict) else None
    return layers, info


def _read_keras_archive(path: Path) -> tuple[bytes, dict | None]:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            if "model.weights.h5" not in names:
                raise PrunekitError(f"{path}: .keras archive without model.weights.h5 (has: {', '.join(names[:5])})")
            member = z.getinfo("model.weights.h5")
            if member.file_size > MAX_ARCHIVE_MEMBER:
                raise PrunekitError(f"{path}: model.weights.h5 is implausibly large ({member.file_size:,} bytes)")
            data = z.read(member)
            config = None
            if "config.json" in names and z.getinfo("config.json").file_size < 64 * 1024**2:
                try:
                    config = json.loads(z.read("config.json").decode("utf-8"))
                except (ValueError, UnicodeDecodeError):
                    config = None
    except zipfile.BadZipFile as e:
        raise PrunekitError(f"{path}: corrupt .keras archive ({e})") from None
    return data, config


def _add(layers: dict[str, dict[str, np.ndarray]], layer: str, role: str, arr: np.ndarray, path: Path) -> None:
    role = _ROLE_ALIASES.get(role, role)
    slot = layers.setdefault(layer, {})
    if role in slot:
        raise PrunekitError(f"{path}: layer '{layer}' appears twice (a model holding several MobileNets?); "
                            "save the MobileNet itself")
    slot[role] = arr


def _read_legacy(g, path: Path) -> dict[str, dict[str, np.ndarray]]:
    """Keras 2 / legacy h5: ``layer_names`` attr, per layer ``weight_names`` like ``conv1/kernel:0``.
    A group holding one layer's weights is that layer (whatever its TF variable scope, e.g. ``conv1_1/``);
    a group holding a nested model's weights is split by the second-to-last part of each weight name."""
    names = [_decode(n) for n in g.attrs.get("layer_names", list(g.keys()))]
    layers: dict[str, dict[str, np.ndarray]] = {}
    for lname in names:
        if lname not in g:
            raise PrunekitError(f"{path}: layer '{lname}' is listed but has no weights group (truncated file?)")
        lg = g[lname]
        wnames = [_decode(w) for w in lg.attrs.get("weight_names", [])]
        parts = [wn.split(":")[0].split("/") for wn in wnames]
        nested = len({tuple(p[:-1]) for p in parts}) > 1
        for wn, p in zip(wnames, parts, strict=True):
            if wn not in lg:
                raise PrunekitError(f"{path}: weight '{wn}' of layer '{lname}' is missing (truncated file?)")
            layer = p[-2] if nested and len(p) >= 2 else lname
            _add(layers, layer, p[-1], np.asarray(lg[wn][()]), path)
    return layers


def _k3_layers(g, h5py) -> list[tuple[str, Any]]:
    """(storage key, vars group) for every layer with variables, recursing into nested models."""
    out = []
    for key in g:
        sub = g[key]
        if not isinstance(sub, h5py.Group):
            continue
        v = sub.get("vars")
        if isinstance(v, h5py.Group) and len(v):
            out.append((key, v))
        if isinstance(sub.get("layers"), h5py.Group):
            out += _k3_layers(sub["layers"], h5py)
    return out


def _k3_index(key: str) -> tuple[str, int]:
    m = re.fullmatch(r"(.*?)(?:_(\d+))?", key)
    return m.group(1), int(m.group(2) or 0)


def _read_keras3(g, config: dict | None, path: Path) -> dict[str, dict[str, np.ndarray]]:
    """Keras 3 ``.weights.h5``: ``layers/<snake_class>_<n>/vars/<i>``. The layer name comes from the vars
    group's ``name`` attribute (recent Keras), else the ``.keras`` config, else MobileNet's build order."""
    h5py = _h5py()
    found = _k3_layers(g, h5py)
    by_kind: dict[str, list[tuple[int, Any]]] = {}
    named: list[tuple[str, str, Any]] = []
    for key, v in found:
        kind, idx = _k3_index(key)
        if kind not in _K3_ROLES:
            raise PrunekitError(f"{path}: unexpected layer '{key}' with weights; a Keras MobileNet V1 has only "
                                "Conv2D, DepthwiseConv2D and BatchNormalization weights")
        name = _decode(v.attrs["name"]) if "name" in v.attrs else None
        if name is not None:
            named.append((name, kind, v))
        by_kind.setdefault(kind, []).append((idx, v))
    if len(named) != len(found):  # no names stored: recover them from the build order
        order = _config_layer_names(config) or _keras_layer_names()
        named = []
        for kind, items in by_kind.items():
            names = order.get(kind, [])
            items.sort(key=lambda t: t[0])
            if len(items) != len(names):
                raise PrunekitError(f"{path}: {len(items)} {kind} layers, Keras MobileNet V1 has {len(names)}")
            named += [(n, kind, v) for n, (_, v) in zip(names, items, strict=True)]
    layers: dict[str, dict[str, np.ndarray]] = {}
    for name, kind, v in named:
        keys = sorted(v.keys(), key=int)
        roles = _K3_ROLES[kind]
        if kind == "batch_normalization" and len(keys) != 4:
            raise PrunekitError(f"{path}: BatchNormalization '{name}' has {len(keys)} variables; expected gamma, "
                                "beta, moving mean and variance (center=True, scale=True)")
        if len(keys) > len(roles):
            raise PrunekitError(f"{path}: layer '{name}' has {len(keys)} variables, expected at most {len(roles)}")
        for k, role in zip(keys, roles, strict=False):
            _add(layers, name, role, np.asarray(v[k][()]), path)
    return layers


def _config_layer_names(config: dict | None) -> dict[str, list[str]] | None:
    """Weighted layer names in the .keras config's order, per storage class name."""
    if not isinstance(config, dict):
        return None
    cls_to_kind = {"Conv2D": "conv2d", "DepthwiseConv2D": "depthwise_conv2d",
                   "BatchNormalization": "batch_normalization"}
    out: dict[str, list[str]] = {}
    for layer in config.get("config", {}).get("layers", []) or []:
        kind = cls_to_kind.get(layer.get("class_name"))
        name = layer.get("config", {}).get("name") or layer.get("name")
        if kind and name:
            out.setdefault(kind, []).append(name)
    return out or None


def _take(layers: dict[str, dict[str, np.ndarray]], name: str, roles: Sequence[str], path: Path,
          used: set[str]) -> list[np.ndarray]:
    if name not in layers:
        if name == "conv_preds":
            raise PrunekitError(f"{path}: no classifier layer 'conv_preds' (a no-top file?); import needs the "
                                "classification head")
        raise PrunekitError(f"{path}: missing layer '{name}' (not a Keras MobileNet V1 file?)")
    got = layers[name]
    missing = [r for r in roles if r not in got]
    if missing:
        raise PrunekitError(f"{path}: layer '{name}' has no {missing[0]} (has: {', '.join(sorted(got))})")
    extra = sorted(set(got) - set(roles))
    if extra:
        what = "a bias" if extra == ["bias"] else ", ".join(extra)
        raise PrunekitError(f"{path}: layer '{name}' has {what}, which Keras' MobileNet V1 does not have")
    used.add(name)
    return [got[r] for r in roles]


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def keras_state_dict(layers: dict[str, dict[str, np.ndarray]], path: Path) -> tuple[dict[str, torch.Tensor], list[int], int]:
    """Our MobileNetV1 state dict from Keras layers; also the channel counts (for the width) and classes."""
    sd: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def conv(name: str, prefix: str) -> int:
        (k,) = _take(layers, name, ["kernel"], path, used)
        if k.ndim != 4:
            raise PrunekitError(f"{path}: layer '{name}' kernel has shape {list(k.shape)}, expected 4 dimensions")
        sd[prefix + ".weight"] = _t(k.transpose(3, 2, 0, 1))  # (kh, kw, in, out) -> (out, in, kh, kw)
        return int(k.shape[3])

    def dwconv(name: str, prefix: str) -> int:
        (k,) = _take(layers, name, ["kernel"], path, used)
        if k.ndim != 4 or k.shape[3] != 1:
            raise PrunekitError(f"{path}: depthwise layer '{name}' kernel has shape {list(k.shape)}; only "
                                "depth_multiplier=1 (shape [3, 3, C, 1]) is supported")
        sd[prefix + ".weight"] = _t(k.transpose(2, 3, 0, 1))  # (kh, kw, C, 1) -> (C, 1, kh, kw)
        return int(k.shape[2])

    def bn(name: str, prefix: str) -> None:
        g, b, m, v = _take(layers, name, _BN_ROLES, path, used)
        for key, a in zip(("weight", "bias", "running_mean", "running_var"), (g, b, m, v), strict=True):
            if a.ndim != 1:
                raise PrunekitError(f"{path}: BatchNormalization '{name}' {key} has shape {list(a.shape)}")
            sd[f"{prefix}.{key}"] = _t(a)
        sd[f"{prefix}.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)

    channels = [conv("conv1", "stem.conv")]
    bn("conv1_bn", "stem.bn")
    for i in range(13):
        dwconv(f"conv_dw_{i + 1}", f"blocks.{i}.dw.conv")
        bn(f"conv_dw_{i + 1}_bn", f"blocks.{i}.dw.bn")
        channels.append(conv(f"conv_pw_{i + 1}", f"blocks.{i}.pw.conv"))
        bn(f"conv_pw_{i + 1}_bn", f"blocks.{i}.pw.bn")
    k, b = _take(layers, "conv_preds", ["kernel", "bias"], path, used)
    if k.ndim != 4 or k.shape[:2] != (1, 1) or b.shape != (k.shape[3],):
        raise PrunekitError(f"{path}: classifier 'conv_preds' has kernel {list(k.shape)} and bias {list(b.shape)}; "
                            "expected a 1x1 convolution")
    sd["classifier.weight"] = _t(k[0, 0].T)
    sd["classifier.bias"] = _t(b)
    extra = sorted(set(layers) - used)
    if extra:
        raise PrunekitError(f"{path}: unexpected layer '{extra[0]}' with weights; the file holds more than "
                            "Keras' MobileNet V1")
    return sd, channels, int(k.shape[3])


def import_keras(path: str | os.PathLike, width: float | None = None, arch: str = "mobilenet_v1", *,
                 class_names: Sequence[str] | None = None, verify: bool = True) -> tuple[MobileNetV1, ModelSpec]:
    """Convert a Keras MobileNet V1 weights file into ``(model, spec)``; ``width`` is read from the weights
    unless given (then it must match). With Keras importable (and ``verify``), the model is checked against
    ``keras.applications.MobileNet`` holding the same weights."""
    _check_arch(arch)
    path = _check_path(path, "Keras")
    layers, info = read_keras_layers(path)
    sd, channels, num_classes = keras_state_dict(layers, path)
    width = detect_width(channels, width, where="file")
    model, kwargs = _build(width, num_classes, "tf", KERAS_BN_EPS, KERAS_DROPOUT, sd, str(path))
    source: dict[str, Any] = {"framework": "keras", **_file_info(path), **info, "width": width,
                              "num_classes": num_classes}
    if verify:
        source["verification"] = _verify_keras(model, layers, width, num_classes)
    else:
        source["verification"] = {"skipped": "disabled"}
    return model, _spec(kwargs, [0.5] * 3, [0.5] * 3, _class_names(num_classes, class_names), source)


def _import_keras_module():
    """Import Keras (torch backend unless KERAS_BACKEND says otherwise); None with a reason if impossible."""
    if "keras" not in sys.modules:
        os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except Exception as e:  # missing, or a backend that is not installed
        return None, f"keras is not importable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    if not hasattr(keras, "applications"):
        return None, f"keras {getattr(keras, '__version__', '?')} has no keras.applications"
    return keras, None


def _verify_keras(model: MobileNetV1, layers: dict[str, dict[str, np.ndarray]], width: float,
                  num_classes: int) -> dict[str, Any]:
    keras, why = _import_keras_module()
    if keras is None:
        return {"skipped": why, "checked": "every MobileNet V1 tensor present with consistent shapes"}
    try:
        km = keras.applications.MobileNet(input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3), alpha=width, depth_multiplier=1,
                                          include_top=True, weights=None, classes=num_classes,
                                          classifier_activation=None)
    except Exception as e:
        return {"skipped": f"cannot build keras.applications.MobileNet ({type(e).__name__}: {e})"}
    for name, roles in layers.items():
        kl = km.get_layer(name)
        order = [_ROLE_ALIASES.get(r, r) for r in
                 (w.name.split(":")[0].split("/")[-1] for w in kl.weights)]
        kl.set_weights([roles[r] for r in order])
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(VERIFY_IMAGES, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    channels_first = keras.backend.image_data_format() == "channels_first"
    x_nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    with torch.no_grad():  # predict(): numpy out on every backend, Keras 2 and 3
        ref = km.predict(x_nchw if channels_first else x, batch_size=VERIFY_IMAGES, verbose=0)
    return _compare(model, x_nchw, np.asarray(ref, dtype=np.float32), f"keras {keras.__version__}")


# --- timm ------------------------------------------------------------------------------------------

_TIMM_BN = ("weight", "bias", "running_mean", "running_var")


def read_timm_state(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A timm state dict from safetensors or ``torch.load(weights_only=True)``, unwrapped from training
    checkpoints (``state_dict_ema`` > ``model_ema`` > ``state_dict`` > ``model``) and DDP ``module.``."""
    from ..io import load_tensors, torch_load

    path = _check_path(path, "timm")
    info: dict[str, Any] = {}
    if path.suffix == ".safetensors":
        sd = load_tensors(path, "timm weights")
        info["format"] = "safetensors"
    elif path.suffix in (".pth", ".pt", ".bin", ".ckpt", ".tar"):
        obj = torch_load(path, "timm checkpoint")
        info["format"] = "torch-state-dict"
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            key = next((k for k in ("state_dict_ema", "model_ema", "state_dict", "model")
                        if isinstance(obj.get(k), dict)), None)
            if key is None:
                raise PrunekitError(f"{path}: checkpoint without a state dict (keys: {', '.join(map(str, list(obj)[:6]))})")
            obj, info["checkpoint_key"] = obj[key], key
        if not (isinstance(obj, dict) and obj and all(isinstance(k, str) for k in obj)):
            raise PrunekitError(f"{path}: not a state dict (got {type(obj).__name__})")
        sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    else:
        raise PrunekitError(f"{path}: unsupported timm weights file '{path.suffix}' (use .safetensors, .pth, .pt or "
                            ".bin)")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd, info


def timm_state_dict(sd: dict[str, torch.Tensor], path: Path) -> tuple[dict[str, torch.Tensor], list[int], int]:
    """Our MobileNetV1 state dict from timm's ``mobilenetv1_*`` names."""
    if "conv_head.weight" in sd:
        raise PrunekitError(f"{path}: the model has a 1x1 head conv before pooling ('conv_head', as in timm's "
                            "mobilenetv1_100h), which prunekit's MobileNetV1 cannot express")
    if "conv_stem.weight" not in sd:
        hint = ", ".join(list(sd)[:3])
        raise PrunekitError(f"{path}: not a timm MobileNet V1 state dict (no 'conv_stem.weight'; starts with {hint})")
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(src: str, dst: str) -> torch.Tensor:
        if src not in sd:
            raise PrunekitError(f"{path}: missing tensor '{src}' (not a timm MobileNet V1 state dict?)")
        used.add(src)
        out[dst] = sd[src].detach().to("cpu")
        return out[dst]

    def bn(src: str, dst: str) -> None:
        for k in _TIMM_BN:
            take(f"{src}.{k}", f"{dst}.{k}")
        nbt = f"{src}.num_batches_tracked"
        out[f"{dst}.num_batches_tracked"] = sd[nbt].detach().to("cpu").long() if nbt in sd else torch.tensor(0)
        used.add(nbt)

    blocks = sorted({tuple(map(int, m.groups())) for k in sd if (m := re.match(r"blocks\.(\d+)\.(\d+)\.", k))})
    stages = [sum(1 for s, _ in blocks if s == i) for i in range(max((s for s, _ in blocks), default=-1) + 1)]
    if tuple(stages) != TIMM_STAGES:
        raise PrunekitError(f"{path}: blocks per stage {stages}; timm's MobileNet V1 has {list(TIMM_STAGES)}")
    channels = [int(take("conv_stem.weight", "stem.conv.weight").shape[0])]
    bn("bn1", "stem.bn")
    for i, (s, j) in enumerate(blocks):
        p = f"blocks.{s}.{j}"
        dw = take(f"{p}.conv_dw.weight", f"blocks.{i}.dw.conv.weight")
        if dw.ndim != 4 or dw.shape[1] != 1:
            raise PrunekitError(f"{path}: '{p}.conv_dw.weight' has shape {list(dw.shape)}; expected a depthwise "
                                "kernel [C, 1, 3, 3]")
        bn(f"{p}.bn1", f"blocks.{i}.dw.bn")
        channels.append(int(take(f"{p}.conv_pw.weight", f"blocks.{i}.pw.conv.weight").shape[0]))
        bn(f"{p}.bn2", f"blocks.{i}.pw.bn")
    w = take("classifier.weight", "classifier.weight")
    take("classifier.bias", "classifier.bias")
    extra = sorted(set(sd) - used)
    if extra:
        raise PrunekitError(f"{path}: unexpected tensor '{extra[0]}'; the file holds more than timm's MobileNet V1")
    return out, channels, int(w.shape[0])


def _timm_config(path: Path) -> dict[str, Any] | None:
    """A Hugging Face hub ``config.json`` next to the weights (architecture, pretrained_cfg, label_names)."""
    cfg = path.parent / "config.json"
    if not cfg.is_file():
        return None
    try:
        doc = json.loads(cfg.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, OSError):
        return None
    return doc if isinstance(doc, dict) and "architecture" in doc else None


def _timm_module():
    try:
        import timm
    except Exception as e:
        return None, f"timm is not importable ({type(e).__name__})"
    return timm, None


def import_timm(path: str | os.PathLike, width: float | None = None, arch: str = "mobilenet_v1", *,
                model_name: str | None = None, class_names: Sequence[str] | None = None,
                verify: bool = True) -> tuple[MobileNetV1, ModelSpec]:
    """Convert timm ``mobilenetv1_*`` weights into ``(model, spec)``. ``model_name`` (e.g. ``mobilenetv1_100``)
    defaults to a ``config.json`` next to the file, else ``mobilenetv1_<width*100>``; it selects the
    preprocessing (pretrained_cfg) and the timm model used for verification."""
    _check_arch(arch)
    path = _check_path(path, "timm")
    raw, info = read_timm_state(path)
    hub = _timm_config(path)
    if hub is not None and model_name is None:
        model_name = str(hub["architecture"])
    if model_name is not None and not model_name.startswith("mobilenetv1"):
        raise PrunekitError(f"{path}: timm model '{model_name}' is not a MobileNet V1 (mobilenetv1_*); only "
                            f"{', '.join(ARCHS)} can be imported")
    sd, channels, num_classes = timm_state_dict(raw, path)
    width = detect_width(channels, width, where="file")
    model, kwargs = _build(width, num_classes, "symmetric", TIMM_BN_EPS, 0.0, sd, str(path))
    model_name = model_name or f"mobilenetv1_{round(width * 100)}"
    timm, why = _timm_module()
    mean, std, cfg_from = list(IMAGENET_MEAN), list(IMAGENET_STD), "standard ImageNet values"
    pcfg = (hub or {}).get("pretrained_cfg") if hub else None
    if isinstance(pcfg, dict) and "mean" in pcfg and "std" in pcfg:
        mean, std, cfg_from = list(pcfg["mean"]), list(pcfg["std"]), "config.json pretrained_cfg"
    elif timm is not None:
        pc = _timm_pretrained_cfg(timm, model_name)
        if pc is not None:
            mean, std, cfg_from = list(pc["mean"]), list(pc["std"]), f"timm {timm.__version__} pretrained_cfg"
    names = class_names
    if names is None and hub is not None and isinstance(hub.get("label_names"), list) \
            and len(hub["label_names"]) == num_classes:
        names = [str(n) for n in hub["label_names"]]
    source: dict[str, Any] = {"framework": "timm", **_file_info(path), **info, "timm_model": model_name,
                              "width": width, "num_classes": num_classes, "normalization_from": cfg_from}
    if not verify:
        source["verification"] = {"skipped": "disabled"}
    elif timm is None:
        source["verification"] = {"skipped": why, "checked": "every MobileNet V1 tensor present with consistent "
                                  "shapes"}
    else:
        source["verification"] = _verify_timm(timm, model, raw, model_name, num_classes)
    return model, _spec(kwargs, mean, std, _class_names(num_classes, names), source)


def _timm_pretrained_cfg(timm, name: str) -> dict[str, Any] | None:
    try:
        pc = timm.models.get_pretrained_cfg(name)
    except Exception:
        return None
    if pc is None:
        return None
    d = pc.to_dict() if hasattr(pc, "to_dict") else dict(pc)
    return d if "mean" in d and "std" in d else None


def _verify_timm(timm, model: MobileNetV1, raw: dict[str, torch.Tensor], name: str, num_classes: int) -> dict:
    if name not in timm.list_models("mobilenetv1*"):
        return {"skipped": f"timm {timm.__version__} has no model '{name}' to compare with"}
    try:
        tm = timm.create_model(name, pretrained=False, num_classes=num_classes)
        tm.load_state_dict({k: v for k, v in raw.items()}, strict=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise VerificationError(f"the weights do not load into timm's {name}: {first}") from None
    tm.eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(VERIFY_IMAGES, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
    with torch.no_grad():
        ref = tm(x).float().numpy()
    return _compare(model, x.numpy(), ref, f"timm {timm.__version__} {name}")
