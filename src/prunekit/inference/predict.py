"""Top-k labels for image files, with any runtime.

Images are decoded exactly like an ImageFolder dataset (:func:`prunekit.data.imagefolder.load_image`: any PIL
mode to the model's channels, shorter-side resize + center crop when the model says so) and normalised with
the model's mean/std, so a picture gets the same input at predict time as in evaluation.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import PrunekitError
from ..models import InputSpec
from .runtime import Runtime


@dataclass
class Label:
    index: int
    name: str
    prob: float


@dataclass
class Prediction:
    image: str
    top: list[Label]

    def to_dict(self) -> dict:
        return {"image": self.image, "top": [asdict(t) for t in self.top]}


def preprocess(images: np.ndarray, inp: InputSpec) -> np.ndarray:
    """uint8 ``(N, C, H, W)`` -> float32 normalised with the model's per-channel mean/std (0..1 scale)."""
    x = images.astype(np.float32) / 255.0
    mean = np.asarray(inp.mean, dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(inp.std, dtype=np.float32).reshape(1, -1, 1, 1)
    return (x - mean) / std


def load_images(paths: Sequence[str | os.PathLike], inp: InputSpec) -> np.ndarray:
    """Decode image files to uint8 ``(N, C, H, W)`` at the model's input size (one-line errors)."""
    from ..data.imagefolder import load_image

    out = np.empty((len(paths), inp.channels, *inp.size), dtype=np.uint8)
    for i, p in enumerate(paths):
        p = Path(p)
        if not p.exists():
            raise PrunekitError(f"image not found: {p}")
        if p.is_dir():
            raise PrunekitError(f"{p} is a directory, not an image")
        out[i] = load_image(p, inp.channels, inp.size, inp.resize)
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def top_k(logits: np.ndarray, k: int, names: Sequence[str]) -> list[list[Label]]:
    """Per row, the k most likely classes (ties broken by class index), with softmax probabilities."""
    probs = softmax(logits)
    k = max(1, min(k, logits.shape[1]))
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return [[Label(int(j), names[int(j)], float(probs[i, j])) for j in row] for i, row in enumerate(order)]


def predict(rt: Runtime, images: Sequence[str | os.PathLike], topk: int = 5, batch_size: int = 64) -> list[Prediction]:
    """Top-``topk`` labels for each image file."""
    if not images:
        raise PrunekitError("no images given")
    rt.check_memory(min(batch_size, len(images)), "predict")
    results: list[Prediction] = []
    for start in range(0, len(images), batch_size):
        chunk = list(images[start:start + batch_size])
        x = preprocess(load_images(chunk, rt.meta.input), rt.meta.input)
        logits = rt.predict_logits(x)
        names = rt.class_names(logits.shape[1])
        for path, top in zip(chunk, top_k(logits, topk, names), strict=True):
            results.append(Prediction(str(path), top))
    return results
