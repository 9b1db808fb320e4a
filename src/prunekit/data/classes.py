"""ImageNet-1k labels, and matching a dataset's classes to a model's (ImageNet-val-style folders holding a
subset of the classes).

A model trained on ImageNet has 1000 (or, TF-slim style, 1001 with "background" first) outputs; a folder
of a few ImageNet classes has a few subfolders. :func:`class_index_map` maps each data class to a model
output so the labels can be rewritten into the model's index space:

1. by name: every folder name equals exactly one model class name (case-insensitive, ``_`` read as a
   space), e.g. ``goldfish/`` or ``great_white_shark/``;
2. by ImageNet WordNet id: every folder name is an ImageNet-1k wnid (``n01443537/``, the layout of the
   official ImageNet train/val folders) and the model's classes are the ImageNet-1k names (1000, or 1001
   with "background" first).

Otherwise there is no mapping (None) and callers fall back to comparing class counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from ..errors import PrunekitError
from .bundle import DataBundle

_HERE = Path(__file__).resolve().parent
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names (shipped with prunekit), in class-index order."""
    return (_HERE / "imagenet_classes.txt").read_text(encoding="utf-8").splitlines()


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k WordNet ids, in class-index order (sorted, as in the official folders)."""
    return (_HERE / "imagenet_wnids.txt").read_text(encoding="utf-8").split()


def _norm(name: str) -> str:
    return " ".join(name.replace("_", " ").split()).casefold()


def class_index_map(data_names: Sequence[str], model_names: Sequence[str]) -> tuple[list[int], str] | None:
    """``(model index of each data class, how it was matched)``, or None when the data classes cannot be
    matched one-to-one onto the model's."""
    data_names, model_names = list(data_names), list(model_names)
    if not data_names:
        return None
    index: dict[str, list[int]] = {}
    for i, n in enumerate(model_names):
        index.setdefault(_norm(n), []).append(i)
    hits = [index.get(_norm(n), []) for n in data_names]
    if all(len(h) == 1 for h in hits):
        mapping = [h[0] for h in hits]
        if len(set(mapping)) == len(mapping):
            return mapping, "name"
    wnids = {w: i for i, w in enumerate(imagenet_wnids())}
    if all(n in wnids for n in data_names):
        names = imagenet_classes()
        offset = {tuple(names): 0, ("background", *names): 1}.get(tuple(model_names))
        if offset is not None:
            return [wnids[n] + offset for n in data_names], "imagenet-wnid"
    return None


def relabel(bundle: DataBundle, mapping: Sequence[int], class_names: Sequence[str]) -> DataBundle:
    """The bundle with label ``c`` rewritten to ``mapping[c]`` and the classes replaced by ``class_names``."""
    lut = torch.tensor(list(mapping), dtype=torch.int64)

    def conv(s):
        if not hasattr(s, "relabel"):
            raise PrunekitError(f"cannot relabel a {type(s).__name__} split")
        return s.relabel(lut)

    return replace(bundle, train=conv(bundle.train), test=conv(bundle.test), class_names=list(class_names),
                   notes=dict(bundle.notes))
