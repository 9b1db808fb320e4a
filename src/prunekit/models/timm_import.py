"""Import the weights of any timm architecture into a ``timm:NAME`` prunekit model directory.

The file (``.safetensors``, or a state dict / training checkpoint read with ``torch.load(weights_only=True)``) is
read by :func:`~prunekit.models.importers.read_timm_state`; the number of classes comes from the classifier
weights (``pretrained_cfg["classifier"]``; none: a headless model, ``num_classes=0``); every tensor must match
``timm.create_model(NAME, num_classes=N)`` by name and shape. With ``verify`` the imported model is compared with
timm's own loading of the same file (``timm.models.load_checkpoint``) on random images at the model's input size
(max abs logit difference <= 1e-4, scaled for logits above 100). Input size, mean/std and the resize before the
center crop come from a ``config.json`` next to the file (a Hugging Face hub download), else timm's
``pretrained_cfg``.

>>> model, spec = import_timm_model("resnet18.safetensors", "timm:resnet18")   # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import PrunekitError, VerificationError
from .importers import (
    VERIFY_IMAGES,
    _check_path,
    _class_names,
    _compare,
    _file_info,
    _timm_config,
    read_timm_state,
)
from .serialization import InputSpec, ModelSpec
from .timm_models import TIMM_PREFIX, check_timm_name, create_timm, pretrained_cfg, timm_module


def _classifier_keys(cfg: dict[str, Any]) -> list[str]:
    heads = cfg.get("classifier") or []
    heads = [heads] if isinstance(heads, str) else list(heads)
    return [f"{h}.weight" for h in heads]


def _num_classes(raw: dict[str, torch.Tensor], cfg: dict[str, Any], name: str, path: Any) -> int:
    keys = _classifier_keys(cfg)
    found = [k for k in keys if k in raw]
    if found:
        return int(raw[found[0]].shape[0])
    if keys:
        return 0  # no classifier in the file: a feature extractor
    raise PrunekitError(f"{path}: timm model '{name}' has no classifier in its pretrained_cfg; cannot tell the number "
                        "of classes")


def _input(cfg: dict[str, Any]) -> tuple[InputSpec, str]:
    c, h, w = (cfg.get("input_size") or (3, 224, 224))[-3:]
    mean, std = cfg.get("mean"), cfg.get("std")
    if not (mean and std and len(mean) == c and len(std) == c):
        from ..data.classes import IMAGENET_MEAN, IMAGENET_STD

        mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)
    crop = cfg.get("crop_pct")
    resize = int(round(min(h, w) / crop)) if isinstance(crop, (int, float)) and 0 < crop <= 1 else None
    return InputSpec([int(h), int(w)], int(c), [float(v) for v in mean], [float(v) for v in std], resize).validate(), \
        f"{int(h)}x{int(w)}"


def import_timm_model(path: str | os.PathLike, arch: str, *, class_names: Sequence[str] | None = None,
                      verify: bool = True) -> tuple[nn.Module, ModelSpec]:
    """Load timm weights for ``arch`` (``timm:NAME``) into ``(model, spec)``; see the module docstring."""
    if not arch.startswith(TIMM_PREFIX):
        raise PrunekitError(f"import_timm_model needs a timm:NAME architecture, got '{arch}'")
    name = arch[len(TIMM_PREFIX):]
    check_timm_name(name, "--arch")
    path = _check_path(path, "timm")
    raw, info = read_timm_state(path)
    hub = _timm_config(path)
    if hub is not None and str(hub["architecture"]).split(".")[0] != name:
        raise PrunekitError(f"{path.parent / 'config.json'} describes timm model '{hub['architecture']}', not '{name}'")
    cfg = pretrained_cfg(name)
    cfg_from = f"timm {timm_module().__version__} pretrained_cfg"
    if hub is not None and isinstance(hub.get("pretrained_cfg"), dict):
        cfg, cfg_from = {**cfg, **hub["pretrained_cfg"]}, "config.json pretrained_cfg"
    num_classes = _num_classes(raw, cfg, name, path)
    model = create_timm(name, num_classes=num_classes).eval()
    _load_exactly(model, raw, f"{path} ({arch}, {num_classes} classes)")
    inp, size = _input(cfg)
    names = class_names
    if names is None and hub is not None and isinstance(hub.get("label_names"), list) \
            and len(hub["label_names"]) == num_classes:
        names = [str(n) for n in hub["label_names"]]
    source: dict[str, Any] = {"framework": "timm", **_file_info(path), **info, "timm_model": name,
                              "num_classes": num_classes, "normalization_from": cfg_from, "input": size}
    source["verification"] = _verify(model, path, name, num_classes, inp) if verify else {"skipped": "disabled"}
    spec = ModelSpec(arch, {"num_classes": num_classes}, inp,
                     _class_names(num_classes, names) if num_classes else None, {"source": source})
    return model, spec


def _load_exactly(model: nn.Module, raw: dict[str, torch.Tensor], where: str) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in raw]
    extra = [k for k in raw if k not in expected]
    if missing or extra:
        what = f"no tensor '{missing[0]}'" if missing else f"unexpected tensor '{extra[0]}'"
        raise PrunekitError(f"{where}: the weights do not fit the architecture: {what} ({len(missing)} missing, "
                            f"{len(extra)} unexpected)")
    for k, v in expected.items():
        t = raw[k]
        if tuple(t.shape) != tuple(v.shape):
            raise PrunekitError(f"{where}: '{k}' has shape {list(t.shape)}, the architecture needs {list(v.shape)}")
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise PrunekitError(f"{where}: '{k}' contains NaN or infinite values")
    model.load_state_dict({k: raw[k].to(v.dtype) for k, v in expected.items()}, strict=True)


def _verify(model: nn.Module, path: Any, name: str, num_classes: int, inp: InputSpec) -> dict[str, Any]:
    timm = timm_module()
    ref = timm.create_model(name, pretrained=False, num_classes=num_classes)
    try:
        timm.models.load_checkpoint(ref, str(path), use_ema=True, strict=True, weights_only=True)
    except Exception as e:  # noqa: BLE001 - timm's loader raises what torch raises
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise VerificationError(f"timm cannot load {path} into {name} itself: {first}") from None
    ref.eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(VERIFY_IMAGES, inp.channels, *inp.size, generator=g)
    with torch.no_grad():
        out = ref(x)
    ref_np = (out if isinstance(out, torch.Tensor) else out[0]).float().numpy()
    return _compare(model, x.numpy(), np.asarray(ref_np), f"timm {timm.__version__} {name} (timm's load_checkpoint)")
