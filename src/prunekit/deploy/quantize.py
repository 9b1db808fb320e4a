"""int8 static quantization of an fp32 ONNX model with ONNX Runtime (QDQ format, per-channel weights).

Calibration batches come from prunekit's own data pipeline (training split, no augmentation, normalised with
the model's mean/std read from the ONNX metadata), so calibration sees exactly what the model saw in
training. The model is first run through ``quant_pre_process`` (shape inference + ORT graph optimisation),
which fuses what BatchNorm/activation folding left and gives the quantizer a cleaner graph. The activation
and weight types and ``reduce_range`` suit the CPU it runs on (:mod:`prunekit.deploy.cpu`: U8S8 on x86 with
VNNI/AMX, U8S8 + reduce_range on AVX2/AVX-512 without VNNI, S8S8 on ARM), each overridable; weights get one
scale per output channel, which matters for depthwise convolutions whose channel ranges differ widely.
The int8 file keeps the fp32 model's metadata (precision set to int8, plus the settings and why they were
chosen) and gets its own sidecar. :class:`Int8Builder` quantizes the same model again with some layers kept
in fp32 without pre-processing or calibrating again (the accuracy guard, :mod:`prunekit.deploy.guard`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import io
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import PrunekitError
from .cpu import QuantSettings, settings_for
from .metadata import write_model_file
from .onnx import load_onnx_proto, onnx_meta, ort_session, set_metadata

METHODS = ("minmax", "entropy", "percentile")


def per_tensor_zeroed(graph, settings: QuantSettings) -> list[dict[str, Any]]:
    """Layers whose weights, quantized with one scale per tensor (``settings.per_channel`` off), round whole
    output channels to zero: a channel whose largest |weight| is below half the tensor's quantization step (the
    tensor's range over 254 levels, 128 with 7-bit ``reduce_range`` weights; 255 and 127 for asymmetric uint8) loses
    all its weights. BatchNorm folded into a convolution makes this common (a channel with a tiny running variance
    gets weights hundreds of times larger than its neighbours: MobileNet's depthwise layers). Returns, per
    such layer (Conv/ConvTranspose/Gemm with a constant weight), ``{node, zeroed, channels, spread}``, ``spread``
    being the largest channel range over the median one (None when the median channel is all zeros); empty when
    per-channel scales are used."""
    from onnx import numpy_helper

    if settings.per_channel:
        return []
    inits = {i.name: i for i in graph.initializer}
    out = []
    for n in graph.node:
        if n.op_type not in ("Conv", "ConvTranspose", "Gemm") or len(n.input) < 2 or n.input[1] not in inits:
            continue
        w = numpy_helper.to_array(inits[n.input[1]]).astype(np.float64)
        if w.ndim < 2 or w.size == 0:
            continue
        trans_b = any(a.name == "transB" and a.i for a in n.attribute)
        axis = 1 if n.op_type == "ConvTranspose" or (n.op_type == "Gemm" and not trans_b) else 0
        ch = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
        if settings.weights == "uint8":
            lo, hi = min(0.0, float(ch.min())), max(0.0, float(ch.max()))
            step = (hi - lo) / (127 if settings.reduce_range else 255)
        else:
            step = 2 * float(np.abs(ch).max()) / (128 if settings.reduce_range else 254)
        amax = np.abs(ch).max(axis=1)
        zeroed = int((amax < step / 2).sum())
        if zeroed:
            med = float(np.median(amax))
            out.append({"node": n.name or n.output[0], "zeroed": zeroed, "channels": int(len(amax)),
                        "spread": float(amax.max() / med) if med > 0 else None})
    return out


def zeroed_summary(layers: Sequence[dict[str, Any]]) -> str:
    """One line for :func:`per_tensor_zeroed`'s result ('' when nothing is lost)."""
    if not layers:
        return ""
    worst = max(layers, key=lambda d: d["zeroed"] / d["channels"])
    total = sum(d["zeroed"] for d in layers)
    return (f"per-tensor weight scales round every weight of {total} output channel{'s' if total != 1 else ''} "
            f"to zero in {len(layers)} layer{'s' if len(layers) != 1 else ''} (worst: {worst['node']}, "
            f"{worst['zeroed']} of {worst['channels']}"
            + (f", channel ranges {worst['spread']:.0f}x apart" if worst["spread"] is not None else "")
            + "); per-channel scales (--per-channel, the default) keep them")


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


class Int8Builder:
    """Quantizes one fp32 ONNX model, as often as needed (e.g. with a few layers kept in fp32 by the accuracy
    guard): the model is pre-processed once and calibrated once (ONNX Runtime's calibration cache).

    >>> with Int8Builder("model.onnx", batches, settings=settings_for()) as b:   # doctest: +SKIP
    ...     b.write(b.build(exclude=["node_Conv_12"]), "model.int8.onnx")
    """

    def __init__(self, src: str | os.PathLike, calibration: Iterable[np.ndarray], *, method: str = "minmax",
                 settings: QuantSettings | None = None, preprocess: bool = True, calib_source: str = "",
                 keep_samples: int = 64):
        from onnxruntime import quantization as q

        if method not in METHODS:
            raise PrunekitError(f"unknown calibration method '{method}'; valid: {', '.join(METHODS)}")
        self.src = Path(src)
        proto = load_onnx_proto(self.src)
        self.meta = onnx_meta(self.src, {p.key: p.value for p in proto.metadata_props})
        if self.meta.precision != "fp32" or any(n.op_type in ("QuantizeLinear", "QLinearConv") for n in proto.graph.node):
            raise PrunekitError(f"{self.src} is already quantized ({self.meta.precision}); give the fp32 ONNX model")
        self.input_name = proto.graph.input[0].name
        del proto
        self.method, self.calib_source = method, calib_source
        self.settings = settings or settings_for()
        self._q = q
        self._tmp = tempfile.TemporaryDirectory(prefix="prunekit-quant-")
        self.dir = Path(self._tmp.name)
        self.kept: list[np.ndarray] = []  # the first calibration images (for the guard's sensitivity measurement)
        self._cache = self.dir / "calibration.json"
        self._cache_supported = "calibration_cache_path" in inspect.signature(q.quantize_static).parameters
        self._replay: list[np.ndarray] | None = None
        if not self._cache_supported:
            calibration = self._replay = list(calibration)
        self._reader = self._new_reader(self._keep(calibration, keep_samples))
        self.note = None
        self.model_in = self.src
        if preprocess:
            pre = self.dir / "pre.onnx"
            try:
                with _quiet():
                    q.shape_inference.quant_pre_process(str(self.src), str(pre))
                self.model_in = pre
            except Exception as e:  # pre-processing is an optimisation, not a requirement
                self.note = f"quant_pre_process skipped ({type(e).__name__})"
        self.builds = 0
        self.seconds = 0.0
        self._zeroed: dict[tuple[str, bool], list[dict[str, Any]]] = {}

    def _new_reader(self, batches: Iterable[np.ndarray]) -> _Reader:
        """A real ``CalibrationDataReader`` subclass (duck typing works today; isinstance checks may come)."""
        return type("CalibrationReader", (_Reader, self._q.CalibrationDataReader), {})(self.input_name, batches)

    def _keep(self, batches: Iterable[np.ndarray], n: int) -> Iterator[np.ndarray]:
        for x in batches:
            have = sum(len(k) for k in self.kept)
            if have < n:
                self.kept.append(np.asarray(x[: n - have], dtype=np.float32))
            yield x

    def __enter__(self) -> Int8Builder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._tmp.cleanup()

    @property
    def calib_samples(self) -> int:
        return self._reader.count

    def fp32_graph(self):
        """The (pre-processed) fp32 graph that is quantized: node names here are what ``exclude`` takes."""
        import onnx

        return onnx.load(str(self.model_in))

    def build(self, exclude: Sequence[str] = (), settings: QuantSettings | None = None):
        """The int8 QDQ model (an ``onnx.ModelProto`` with prunekit metadata), nodes in ``exclude`` kept fp32,
        quantized with ``settings`` (default: the builder's; the calibration ranges are shared either way)."""
        import onnx

        q, s = self._q, settings or self.settings
        t0 = time.perf_counter()
        calib_method = {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
                        "percentile": q.CalibrationMethod.Percentile}[self.method]
        qtype = {"uint8": q.QuantType.QUInt8, "int8": q.QuantType.QInt8}
        kw: dict[str, Any] = {}
        reader: Any = self._reader
        if self._cache_supported:
            kw["calibration_cache_path"] = str(self._cache)
            if self.builds:
                reader = None  # the ranges come from the cache written by the first build
        elif self.builds:  # an ONNX Runtime without calibration cache: calibrate again on the same images
            reader = self._new_reader(iter(self._replay or []))
        out = self.dir / f"int8_{self.builds}.onnx"
        try:
            with _quiet():
                q.quantize_static(str(self.model_in), str(out), reader, quant_format=q.QuantFormat.QDQ,
                                  per_channel=s.per_channel, reduce_range=s.reduce_range,
                                  activation_type=qtype[s.activations], weight_type=qtype[s.weights],
                                  calibrate_method=calib_method, nodes_to_exclude=list(exclude), **kw)
        except PrunekitError:
            raise
        except Exception as e:
            if self._reader.count == 0:
                raise PrunekitError("quantization got no calibration images (empty dataset?)") from None
            msg = str(e).strip()
            raise PrunekitError(f"quantization failed: {type(e).__name__}: {msg.splitlines()[0] if msg else ''}") \
                from None
        if self._reader.count == 0:
            raise PrunekitError("quantization got no calibration images (empty dataset?)")
        self.builds += 1
        self.seconds += time.perf_counter() - t0
        proto = onnx.load(str(out))
        out.unlink()
        meta = copy.deepcopy(self.meta)
        meta.precision = "int8"
        meta.info = {**{k: v for k, v in meta.info.items() if k in ("exporter",)},
                     "quantization": {"tool": "onnxruntime.quantization.quantize_static", "format": "QDQ",
                                      "method": self.method, **s.to_dict(), "fp32_nodes": list(exclude),
                                      "calib_samples": self._reader.count, "calib_data": self.calib_source,
                                      "preprocessed": self.model_in != self.src, "fp32_source": self.src.name,
                                      **({"note": self.note} if self.note else {})}}
        if not s.per_channel:  # computed once per weight type and range, whatever is kept fp32
            key = (s.weights, s.reduce_range)
            if key not in self._zeroed:
                self._zeroed[key] = per_tensor_zeroed(self.fp32_graph().graph, s)
            zeroed = [d for d in self._zeroed[key] if d["node"] not in exclude]
            if zeroed:
                meta.info["quantization"]["per_tensor_zeroed"] = zeroed
        set_metadata(proto, meta)
        return proto

    def write(self, proto, out: str | os.PathLike) -> dict[str, Any]:
        """Write an int8 model from :meth:`build` to ``out`` (+ sidecar) once ONNX Runtime has loaded it."""
        from .metadata import META_KEY, DeployMeta

        data = proto.SerializeToString()
        ort_session(data, what="quantized model")  # must load before anything is written
        meta = DeployMeta.from_json({p.key: p.value for p in proto.metadata_props}[META_KEY], "int8 model")
        side = write_model_file(out, data, meta)
        fp32_bytes = self.src.stat().st_size
        info = meta.info["quantization"]
        return {"path": str(out), "sidecar": str(side), "bytes": len(data), "fp32_bytes": fp32_bytes,
                "size_ratio": len(data) / fp32_bytes, "method": self.method, "per_channel": info["per_channel"],
                "settings": {k: info[k] for k in SETTINGS_KEYS}, "fp32_nodes": info["fp32_nodes"],
                "per_tensor_zeroed": info.get("per_tensor_zeroed", []),
                "calib_samples": self._reader.count, "calib_data": self.calib_source, "seconds": self.seconds}


SETTINGS_KEYS = ("activations", "weights", "reduce_range", "per_channel", "label", "cpu_class", "cpu", "cpu_flags",
                 "cpu_source", "int8_expected_faster", "reason", "overridden")  # QuantSettings.to_dict(), per model


def quantize_onnx(src: str | os.PathLike, out: str | os.PathLike, calibration: Iterable[np.ndarray], *,
                  method: str = "minmax", per_channel: bool | None = None, preprocess: bool = True,
                  calib_source: str = "", settings: QuantSettings | None = None,
                  exclude: Sequence[str] = ()) -> dict:
    """Quantize ``src`` (fp32 ONNX exported by prunekit) to ``out`` (int8 QDQ) with static calibration.

    ``settings`` (activation/weight types, reduce_range, per-channel) default to what suits this machine's CPU
    (:func:`prunekit.deploy.cpu.settings_for`); ``per_channel`` overrides theirs. The settings and the reason
    for them are recorded in the int8 model's metadata. Nothing is written unless quantization succeeds and
    ONNX Runtime loads the result.
    """
    settings = settings or settings_for()
    if per_channel is not None:
        settings = dataclasses.replace(settings, per_channel=per_channel)
    with Int8Builder(src, calibration, method=method, settings=settings, preprocess=preprocess,
                     calib_source=calib_source) as b:
        return b.write(b.build(exclude), out)


def default_int8_path(src: str | os.PathLike) -> Path:
    """``model.onnx`` -> ``model.int8.onnx``."""
    src = Path(src)
    stem = src.name[:-5] if src.name.endswith(".onnx") else src.name
    return src.with_name(stem + ".int8.onnx")
