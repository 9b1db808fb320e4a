"""int8 static quantization of an fp32 ONNX model with ONNX Runtime (QDQ format, per-channel weights).

Calibration batches come from prunekit's own data pipeline (training split, no augmentation, normalised with
the model's mean/std read from the ONNX metadata), so calibration sees exactly what the model saw in
training. The model is first run through ``quant_pre_process`` (shape inference + ORT graph optimisation),
which fuses what BatchNorm/activation folding left and gives the quantizer a cleaner graph. Activations are
uint8 and weights int8 (U8S8), the combination ONNX Runtime's x86 kernels are fastest with; weights get one
scale per output channel, which matters for depthwise convolutions whose channel ranges differ widely.
The int8 file keeps the fp32 model's metadata (precision set to int8) and gets its own sidecar.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from ..errors import PrunekitError
from .metadata import write_model_file
from .onnx import load_onnx_proto, onnx_meta, ort_session, set_metadata

METHODS = ("minmax", "entropy", "percentile")


def calibration_batches(bundle, samples: int, batch_size: int = 64, split: str = "train") -> Iterator[np.ndarray]:
    """The first ``samples`` images of ``split``, preprocessed like training (normalised, no augmentation)."""
    from ..data import iterate_batches

    left = samples
    for x, _ in iterate_batches(bundle, split, batch_size, train=False):
        if left <= 0:
            return
        x = x[:left]
        left -= len(x)
        yield x.numpy().astype(np.float32, copy=False)


class _Reader:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over numpy batches."""

    def __init__(self, input_name: str, batches: Iterable[np.ndarray]):
        self.input_name, self._it, self.count = input_name, iter(batches), 0

    def get_next(self):
        x = next(self._it, None)
        if x is None:
            return None
        self.count += len(x)
        return {self.input_name: np.ascontiguousarray(x, dtype=np.float32)}

    def __iter__(self):
        return self

    def __next__(self):
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item


@contextlib.contextmanager
def _quiet():
    """ORT quantization prints progress (stdout) and warnings (root logger): keep --json output clean."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def quantize_onnx(src: str | os.PathLike, out: str | os.PathLike, calibration: Iterable[np.ndarray], *,
                  method: str = "minmax", per_channel: bool = True, preprocess: bool = True,
                  calib_source: str = "") -> dict:
    """Quantize ``src`` (fp32 ONNX exported by prunekit) to ``out`` (int8 QDQ) with static calibration.

    Nothing is written unless quantization succeeds and ONNX Runtime loads the result.
    """
    from onnxruntime import quantization as q

    if method not in METHODS:
        raise PrunekitError(f"unknown calibration method '{method}'; valid: {', '.join(METHODS)}")
    t0 = time.perf_counter()
    src = Path(src)
    proto = load_onnx_proto(src)
    meta = onnx_meta(src, {p.key: p.value for p in proto.metadata_props})
    if meta.precision != "fp32" or any(n.op_type in ("QuantizeLinear", "QLinearConv") for n in proto.graph.node):
        raise PrunekitError(f"{src} is already quantized ({meta.precision}); give the fp32 ONNX model")
    input_name = proto.graph.input[0].name
    del proto
    calib_method = {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
                    "percentile": q.CalibrationMethod.Percentile}[method]
    # a real CalibrationDataReader subclass (duck typing works today; isinstance checks may come)
    reader = type("CalibrationReader", (_Reader, q.CalibrationDataReader), {})(input_name, calibration)
    note = None
    with tempfile.TemporaryDirectory(prefix="prunekit-quant-") as tmp:
        model_in = src
        if preprocess:
            pre = Path(tmp) / "pre.onnx"
            try:
                with _quiet():
                    q.shape_inference.quant_pre_process(str(src), str(pre))
                model_in = pre
            except Exception as e:  # pre-processing is an optimisation, not a requirement
                note = f"quant_pre_process skipped ({type(e).__name__})"
        q_path = Path(tmp) / "model.int8.onnx"
        try:
            with _quiet():
                q.quantize_static(str(model_in), str(q_path), reader, quant_format=q.QuantFormat.QDQ,
                                  per_channel=per_channel, activation_type=q.QuantType.QUInt8,
                                  weight_type=q.QuantType.QInt8, calibrate_method=calib_method)
        except PrunekitError:
            raise
        except Exception as e:
            s = str(e).strip()
            raise PrunekitError(f"quantization failed: {type(e).__name__}: {s.splitlines()[0] if s else ''}") from None
        if reader.count == 0:
            raise PrunekitError("quantization got no calibration images (empty dataset?)")
        import onnx

        qproto = onnx.load(str(q_path))
    meta.precision = "int8"
    meta.info = {**{k: v for k, v in meta.info.items() if k in ("exporter",)},
                 "quantization": {"tool": "onnxruntime.quantization.quantize_static", "format": "QDQ",
                                  "method": method, "per_channel": per_channel, "activations": "uint8",
                                  "weights": "int8", "calib_samples": reader.count, "calib_data": calib_source,
                                  "preprocessed": model_in != src, "fp32_source": src.name,
                                  **({"note": note} if note else {})}}
    set_metadata(qproto, meta)
    data = qproto.SerializeToString()
    ort_session(data, what="quantized model")  # must load before anything is written
    side = write_model_file(out, data, meta)
    return {"path": str(out), "sidecar": str(side), "bytes": len(data), "fp32_bytes": src.stat().st_size,
            "size_ratio": len(data) / src.stat().st_size, "method": method, "per_channel": per_channel,
            "calib_samples": reader.count, "calib_data": calib_source, "seconds": time.perf_counter() - t0}


def default_int8_path(src: str | os.PathLike) -> Path:
    """``model.onnx`` -> ``model.int8.onnx``."""
    src = Path(src)
    stem = src.name[:-5] if src.name.endswith(".onnx") else src.name
    return src.with_name(stem + ".int8.onnx")
