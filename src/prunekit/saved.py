"""Saved models: a model directory (``model.json`` + ``model.safetensors``) together with its pruning state
(``masks.safetensors`` + the plan in ``model.json``), written atomically and read without pickle.

>>> import prunekit                                                      # doctest: +SKIP
>>> prunekit.save(model, "runs/m", spec); loaded = prunekit.load("runs/m")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .cost import profile
from .data.classes import IMAGENET_MEAN, IMAGENET_STD, imagenet_classes
from .errors import PrunekitError
from .io import load_tensors, save_tensors
from .models import InputSpec, ModelSpec, load_model, save_model
from .models._registry import TIMM_PREFIX, TORCHVISION_PREFIX, create_model, default_input
from .pruning import MASK_MODULE, Pruner, restore, strip

MASKS = "masks.safetensors"


@dataclass
class Loaded:
    """A loaded model, its spec, and its pruner when it was saved with masks."""

    model: nn.Module
    spec: ModelSpec
    pruner: Pruner | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.spec.input.channels, *self.spec.input.size)


def save(model: nn.Module, directory: str | os.PathLike, spec: ModelSpec) -> Path:
    """Save ``model`` (and its masks and pruning plan, if it carries any) to ``directory``."""
    directory = Path(directory)
    bank = getattr(model, MASK_MODULE, None)
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith(MASK_MODULE + ".")}
    spec.extra = dict(spec.extra)
    if bank is not None:
        spec.extra["pruning"] = bank.meta
        save_tensors(directory / MASKS, {n: m for n, m in zip(bank.group_names, bank.masks(), strict=True)})
    else:
        spec.extra.pop("pruning", None)
        if (directory / MASKS).exists():
            (directory / MASKS).unlink()
    prof = _stats(model, spec)
    return save_model(model, directory, spec, state_dict=sd, stats=prof)


def _stats(model: nn.Module, spec: ModelSpec) -> dict:
    plain = strip(model, copy=True) if hasattr(model, MASK_MODULE) else model
    p = profile(plain, (spec.input.channels, *spec.input.size))
    return {"params": p.params, "macs": p.macs}


def load(directory: str | os.PathLike, device: str | torch.device = "cpu") -> Loaded:
    """Load a model directory; masks (if saved) are re-attached and returned as a :class:`Pruner`."""
    directory = Path(directory)
    model, spec = load_model(directory, device="cpu")
    pruner = None
    plan = spec.extra.get("pruning")
    if plan is not None:
        masks = load_tensors(directory / MASKS, "pruning masks")
        pruner = restore(model, plan, masks)
    model.to(device)
    return Loaded(model, spec, pruner)


def resolve(ref: str | os.PathLike, device: str | torch.device = "cpu", num_classes: int | None = None) -> Loaded:
    """A model directory, or ``torchvision:NAME`` / ``timm:NAME`` (random weights) for plans and surgery demos."""
    ref = str(ref)
    if ref.startswith((TORCHVISION_PREFIX, TIMM_PREFIX)):
        kwargs = {"num_classes": num_classes} if num_classes else {}
        inp = default_input(ref)
        model = create_model(ref, **kwargs).eval()
        classes = imagenet_classes() if (num_classes or 1000) == 1000 else None
        size = inp["size"]
        spec = ModelSpec(ref, kwargs, InputSpec(size, inp.get("channels", 3), inp.get("mean", list(IMAGENET_MEAN)),
                                                inp.get("std", list(IMAGENET_STD)),
                                                resize=inp.get("resize", int(size[0] * 256 / 224))), classes)
        return Loaded(model.to(device), spec)
    p = Path(ref)
    if p.is_file() and p.suffix in (".pt", ".pth", ".pkl", ".ckpt", ".bin"):
        raise PrunekitError(f"{p}: pickled checkpoints are not loaded (they can run arbitrary code); give a model "
                            "directory with model.json + model.safetensors")
    return load(p, device)
