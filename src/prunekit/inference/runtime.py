"""One interface over every model form prunekit produces.

``load_runtime(ref)`` accepts a model directory (PyTorch eager; a masked model runs with its masks), an
fp32 or int8 ``.onnx`` file (ONNX Runtime, CPU), a TorchScript ``.ts`` archive or an ExportedProgram
``.pt2``. Each runtime exposes :attr:`Runtime.meta` (input size, channels, mean/std, resize, class names)
and ``predict_logits(batch)``: a normalised float32 ``(N, C, H, W)`` batch in, ``(N, classes)`` logits out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..deploy.metadata import DeployMeta
from ..errors import PrunekitError
from ..memory import Activations

PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")
TORCHSCRIPT_SUFFIXES = (".ts", ".torchscript", ".jit")


@dataclass
class Runtime:
    """A loaded model behind ``predict_logits``; subclasses implement ``_run``."""

    path: Path
    meta: DeployMeta
    kind: str = ""  # pytorch | onnxruntime | torchscript | exported-program
    info: dict[str, Any] = field(default_factory=dict)
    activations: Activations | None = None  # per-image memory estimate (set by load_runtime)

    @property
    def precision(self) -> str:
        return self.meta.precision

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.meta.input_shape

    @property
    def name(self) -> str:
        return f"{self.kind} {self.precision}"

    def class_names(self, num_classes: int) -> list[str]:
        """Names for the model's outputs (metadata, else ImageNet's for 1000 outputs, else class_<i>)."""
        names = self.meta.class_names
        if names is not None and len(names) == num_classes:
            return list(names)
        if names is None and num_classes == 1000:
            from ..data.classes import imagenet_classes

            return imagenet_classes()
        return [f"class_{i}" for i in range(num_classes)]

    def check_memory(self, batch: int, what: str = "inference") -> None:
        """Refuse a batch of ``batch`` images that would not fit in memory (call before the work starts)."""
        from ..memory import check_inference

        if self.activations is None:
            self.activations = deploy_activations(self.meta)
        check_inference(self.activations, self.input_shape, batch, f"{what} with {self.path}")

    def predict_logits(self, batch: np.ndarray | torch.Tensor) -> np.ndarray:
        x = batch.detach().cpu().numpy() if isinstance(batch, torch.Tensor) else np.asarray(batch)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(self.input_shape):
            raise PrunekitError(f"{self.path}: expects input (N, {', '.join(map(str, self.input_shape))}), got "
                                f"{tuple(x.shape)}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = self._run(x)
        return np.asarray(out, dtype=np.float32)

    def _run(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


class TorchRuntime(Runtime):
    """PyTorch eager (model directory, TorchScript, ExportedProgram)."""

    def __init__(self, path: Path, meta: DeployMeta, module, kind: str, info: dict | None = None):
        super().__init__(path, meta, kind, info or {})
        self.module = module

    @torch.inference_mode()
    def _run(self, x: np.ndarray) -> np.ndarray:
        out = self.module(torch.from_numpy(x))
        return out.float().numpy()


class OnnxRuntime(Runtime):
    """ONNX Runtime, CPU execution provider."""

    def __init__(self, path: Path, meta: DeployMeta, session, info: dict | None = None):
        super().__init__(path, meta, "onnxruntime", info or {})
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]


def _check_onnx_input(path: Path, session, meta: DeployMeta) -> None:
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise PrunekitError(f"{path}: expected one image input, the graph has {len(inputs)}")
    shape = inputs[0].shape
    if len(shape) != 4:
        raise PrunekitError(f"{path}: expected an (N, C, H, W) input, the graph's input has shape {shape}")
    for got, want, what in zip(shape[1:], meta.input_shape, ("channels", "height", "width"), strict=True):
        if isinstance(got, int) and got != want:
            raise PrunekitError(f"{path}: the metadata says input {'x'.join(map(str, meta.input_shape))} but the "
                                f"graph expects {what} {got} (metadata and model do not match)")


def load_onnx(path: str | os.PathLike, threads: int | None = None) -> OnnxRuntime:
    from ..deploy.onnx import load_onnx_proto, onnx_meta, ort_session

    path = Path(path)
    proto = load_onnx_proto(path)  # clear errors for missing/truncated files before ORT's
    props = {p.key: p.value for p in proto.metadata_props}
    del proto
    meta = onnx_meta(path, props)
    session = ort_session(path, threads, what=f"ONNX model {path}")
    _check_onnx_input(path, session, meta)
    return OnnxRuntime(path, meta, session)


def deploy_activations(meta: DeployMeta) -> Activations:
    """Per-image memory estimate for a deployed model: its architecture (``arch`` + ``kwargs`` of the metadata)
    built on ``meta``. Pruning only removes channels, so the unpruned architecture bounds the deployed one; when
    it cannot be built there, only the input is counted."""
    from ..memory import activations
    from ..models.validate import meta_build

    try:
        model = meta_build(meta.arch, meta.kwargs, "metadata")
    except PrunekitError:
        model = None
    if model is None:
        c, h, w = meta.input_shape
        return Activations(4 * c * h * w, 0, 0, 0, 0, exact=False)
    return activations(model, meta.input_shape)


def load_runtime(ref: str | os.PathLike, threads: int | None = None) -> Runtime:
    """Load any model form behind one interface (see the module docstring); refuses a model that cannot run
    one image in the memory available."""
    rt = _load_runtime(ref, threads)
    rt.check_memory(1, "loading")
    return rt


def _load_runtime(ref: str | os.PathLike, threads: int | None = None) -> Runtime:
    from ..deploy.metadata import read_sidecar

    p = Path(ref)
    if not p.exists():
        raise PrunekitError(f"model not found: {p}")
    if p.is_dir():
        from ..memory import activations
        from ..saved import load

        loaded = load(p)
        meta = DeployMeta.from_spec(loaded.spec, "pytorch")
        info = {"masked": loaded.pruner is not None}
        rt = TorchRuntime(p, meta, loaded.model.eval(), "pytorch", info)
        rt.activations = activations(loaded.model, loaded.input_shape)
        return rt
    suffix = p.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise PrunekitError(f"{p}: pickled checkpoints are not loaded (they can run arbitrary code); give a model "
                            "directory, an .onnx file (`prunekit export`), a TorchScript .ts or an ExportedProgram .pt2")
    if suffix == ".onnx":
        return load_onnx(p, threads)
    if suffix in TORCHSCRIPT_SUFFIXES or suffix == ".pt2":
        from ..deploy.torchscript import load_exported_program, load_torchscript

        kind = "exported-program" if suffix == ".pt2" else "torchscript"
        module, text = load_exported_program(p) if kind == "exported-program" else load_torchscript(p)
        meta = DeployMeta.from_json(text, f"{p} metadata") if text else read_sidecar(p)
        if meta is None:
            raise PrunekitError(f"{p} has no prunekit metadata (prunekit.json) and no matching sidecar; export it "
                                "with `prunekit export`")
        return TorchRuntime(p, meta, module, kind)
    raise PrunekitError(f"{p}: unknown model format '{suffix or p.name}'; give a model directory, .onnx, .ts or .pt2")


def evaluate_runtime(rt: Runtime, bundle, split: str = "test", batch_size: int = 256,
                     limit: int | None = None) -> dict[str, Any]:
    """Top-1/top-5 accuracy (%) of any runtime on a data split (normalised as the bundle says); ``limit``: only
    its first ``limit`` images (a held-out slice)."""
    from ..data import iterate_batches

    rt.check_memory(max(1, min(batch_size, len(getattr(bundle, split, ()) or ()))), "evaluation")
    c1 = c5 = n = 0
    preds = []
    for x, y in iterate_batches(bundle, split, batch_size, train=False):
        if limit is not None:
            if n >= limit:
                break
            x, y = x[: limit - n], y[: limit - n]
        logits = rt.predict_logits(x.numpy())
        k = min(5, logits.shape[1])
        top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
        yy = y.numpy()
        c1 += int((top[:, 0] == yy).sum())
        c5 += int((top == yy[:, None]).any(axis=1).sum())
        n += len(yy)
        preds.append(top[:, 0])
    if n == 0:
        raise PrunekitError(f"the {split} split is empty")
    return {"top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n, "n": n,
            "predictions": np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)}
