"""A measured latency model: per-layer latency tables on the target runtime of *this* machine, summed.

For every convolution and linear layer of a model, the layer alone (with the ReLU that ONNX Runtime fuses into
it) is timed on the target runtime (``onnxruntime-fp32``, ``onnxruntime-int8`` or ``pytorch``), at the batch
size and thread count of the budget, on a grid of input x output channel counts (one axis for depthwise
convolutions, whose input and output channels are tied). A layer timed alone is not the layer inside the model:
each call pays the runtime's per-call overhead, and in a model the runtime fuses, reorders layouts and reuses
caches. So the sum of the layers' interpolated latencies is *calibrated* on whole models measured once: the dense
model and two uniformly pruned ones (timed interleaved): the prediction follows the piecewise-linear curve from
the layers' sum to the measured latency through those points (extended by its end segments), or a least-squares
line when the measurements do not rise with the sum; the points are kept in ``LatencyCost.calibration``. A
budget search re-measures its choice anyway (:func:`prunekit.steps.plan_budget`). Measurements are cached on
disk, keyed by CPU model, runtime and version, threads, batch and layer shape (``$PRUNEKIT_CACHE`` or
``~/.cache/prunekit``), so a second search on the same machine measures nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import PrunekitError
from .bench import available_cores, cpu_model, stats, time_runs

RUNTIMES = ("onnxruntime-fp32", "onnxruntime-int8", "pytorch")
CACHE_VERSION = 1
# Latency budgets keep channel counts multiples of align(): CPU convolution kernels (ONNX Runtime's blocked NCHWc
# layout: blocks of 16 channels with AVX-512, 8 with AVX2; oneDNN alike) run other counts on slow paths and insert
# layout reorders around them, so a model's latency is a saw-tooth in the channel count that no interpolation
# captures (benchmarks/channel_counts.py and round_to_bench.py measure it).
ALIGN = 8


def align() -> int:
    """Channel multiple that keeps this CPU's convolution kernels on their fast path: 16 with AVX-512, else 8."""
    from .bench import cpu_flags

    return 16 if "avx512f" in cpu_flags() else ALIGN


def cache_dir() -> Path:
    return Path(os.environ.get("PRUNEKIT_CACHE") or Path.home() / ".cache" / "prunekit")


@dataclass(frozen=True)
class LayerSpec:
    """A convolution or linear layer as the latency table sees it (its input size is fixed by the model)."""

    name: str
    kind: str  # conv | linear
    in_ch: int
    out_ch: int
    groups: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    bias: bool
    in_hw: tuple[int, ...]  # spatial input size (empty for linear)

    @property
    def depthwise(self) -> bool:
        return self.kind == "conv" and self.groups == self.in_ch == self.out_ch and self.groups > 1

    def sized(self, cin: int, cout: int) -> dict[str, Any]:
        """The layer with ``cin`` inputs and ``cout`` outputs (depthwise stays depthwise; grouped convolutions keep
        their channels per group)."""
        groups = cin if self.depthwise else (max(1, round(cin / (self.in_ch // self.groups))) if self.groups > 1 else 1)
        d = {k: v for k, v in asdict(self).items() if k != "name"}
        return {**d, "in_ch": cin, "out_ch": cout, "groups": groups}

    def module(self, cin: int, cout: int) -> nn.Module:
        s = self.sized(cin, cout)
        if self.kind == "linear":
            return nn.Sequential(nn.Linear(cin, cout, bias=self.bias)).eval()
        conv = nn.Conv2d(cin, cout, self.kernel, self.stride, self.padding, self.dilation, s["groups"], self.bias)
        return nn.Sequential(conv, nn.ReLU()).eval()

    def example(self, batch: int, cin: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        return torch.randn(batch, cin, *self.in_hw, generator=g) if self.kind == "conv" else \
            torch.randn(batch, cin, generator=g)


def layer_specs(model: nn.Module, input_shape: Sequence[int]) -> list[LayerSpec]:
    """Every Conv2d and Linear layer called in one forward pass, with its input's spatial size."""
    specs: dict[str, LayerSpec] = {}
    hooks = []
    for name, m in model.named_modules():
        if type(m) in (nn.Conv2d, nn.Linear):
            def pre(mod, args, name=name):
                x = args[0]
                if name in specs or not isinstance(x, torch.Tensor):
                    return
                if isinstance(mod, nn.Conv2d):
                    if isinstance(mod.padding, str):
                        return
                    specs[name] = LayerSpec(name, "conv", mod.in_channels, mod.out_channels, mod.groups,
                                            tuple(mod.kernel_size), tuple(mod.stride), tuple(mod.padding),
                                            tuple(mod.dilation), mod.bias is not None, tuple(x.shape[2:]))
                elif x.dim() == 2:
                    specs[name] = LayerSpec(name, "linear", mod.in_features, mod.out_features, 1, (), (), (), (),
                                            mod.bias is not None, ())
            hooks.append(m.register_forward_pre_hook(pre))
    was = model.training
    try:
        model.eval()
        p = next(model.parameters(), None)
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=p.device if p is not None else "cpu"))
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    return sorted(specs.values(), key=lambda s: order[s.name])


# --- measuring ---------------------------------------------------------------------------------------------


def _onnx_bytes(module: nn.Module, example: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), buf, dynamo=False, opset_version=18, do_constant_folding=True,
                          input_names=["input"], output_names=["output"])
    return buf.getvalue()


def _quantized(onnx_bytes: bytes, example: torch.Tensor) -> bytes:
    from onnxruntime import quantization as q

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            self.items = [{"input": example.numpy()}]

        def get_next(self):
            return self.items.pop() if self.items else None

    with tempfile.TemporaryDirectory(prefix="prunekit-lat-") as tmp, contextlib.redirect_stdout(io.StringIO()):
        src, dst = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        src.write_bytes(onnx_bytes)
        q.quantize_static(str(src), str(dst), Reader(), quant_format=q.QuantFormat.QDQ, per_channel=True,
                          activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8)
        return dst.read_bytes()


class Timer:
    """Times callables on one runtime, batch size and thread count (median of short runs)."""

    def __init__(self, runtime: str, batch: int, threads: int, max_seconds: float = 0.25, repeats: int = 15,
                 rounds: int = 1):
        if runtime not in RUNTIMES:
            from ..errors import unknown

            raise unknown("budget runtime", runtime, RUNTIMES)
        self.runtime, self.batch, self.threads = runtime, batch, threads
        self.max_seconds, self.repeats, self.rounds = max_seconds, repeats, max(1, rounds)

    def version(self) -> str:
        if self.runtime == "pytorch":
            return torch.__version__
        import onnxruntime as ort

        return ort.__version__

    def careful(self) -> Timer:
        """This runtime, batch and threads with longer runs, for whole models (budgets are set and checked on
        them): 3 rounds of up to 1 s / 30 runs rather than the layers' one round of 0.25 s / 15."""
        return Timer(self.runtime, self.batch, self.threads, max(1.0, self.max_seconds), max(30, self.repeats),
                     max(3, self.rounds))

    def runner(self, module: nn.Module, example: torch.Tensor) -> Callable[[], Any]:
        """One call of ``module`` on ``example`` on this runtime (exported and loaded once)."""
        return self.factory(module, example)()

    def factory(self, module: nn.Module, example: torch.Tensor) -> Callable[[], Callable[[], Any]]:
        """A function that loads ``module`` on this runtime (exported once, here) and returns one call of it: an
        ONNX Runtime session lives only as long as the call it returns (see :func:`bench.time_alternating`)."""
        module = module.eval().cpu()
        if self.runtime == "pytorch":
            def run() -> Any:
                old = torch.get_num_threads()
                torch.set_num_threads(self.threads)
                try:
                    with torch.inference_mode():
                        return module(example)
                finally:
                    torch.set_num_threads(old)

            return lambda: run
        from ..deploy.onnx import ort_session

        data = _onnx_bytes(module, example)
        if self.runtime == "onnxruntime-int8":
            data = _quantized(data, example)

        def load() -> Callable[[], Any]:
            sess = ort_session(data, threads=self.threads, what="latency probe")
            feed = {sess.get_inputs()[0].name: example.numpy()}
            return lambda: sess.run(None, feed)

        return load

    def _round(self, run: Callable[[], Any]) -> float:
        return stats(time_runs(run, 2, self.repeats, self.max_seconds), self.batch)["p50_ms"]

    def model_ms(self, module: nn.Module, example: torch.Tensor) -> float:
        """Milliseconds of one call of ``module`` on ``example`` on this runtime: the median of a round of runs
        (the fastest round's, with several rounds)."""
        run = self.runner(module, example)
        return min(self._round(run) for _ in range(self.rounds))

    def interleaved_ms(self, modules: Sequence[nn.Module], example: torch.Tensor) -> list[float]:
        """Each module's milliseconds, timed in alternation (round r times every module once, in reversed order
        every other round): a machine whose speed drifts over seconds (frequency, neighbours) shifts them alike,
        so their ratios hold. Only the module being timed is loaded (:func:`bench.time_alternating`: idle ONNX
        Runtime sessions spin and take the timed one's cores). Each value is the median of the round medians."""
        from .bench import alternating_rounds

        factories = [self.factory(m, example) for m in modules]
        rounds = alternating_rounds(factories, max(3, self.rounds), lambda run, _: self._round(run))
        return [float(np.median(r)) for r in rounds]


class LatencyTable:
    """Per-layer latencies on this machine, cached on disk (one JSON file per CPU/runtime/threads/batch)."""

    def __init__(self, timer: Timer, cache: Path | None = None):
        self.timer = timer
        machine = {"cpu": cpu_model(), "runtime": timer.runtime, "version": timer.version(),
                   "threads": timer.threads, "batch": timer.batch, "cache_version": CACHE_VERSION}
        self.machine = machine
        key = hashlib.sha256(json.dumps(machine, sort_keys=True).encode()).hexdigest()[:16]
        self.path = (cache or cache_dir()) / "latency" / f"{key}.json"
        self.entries: dict[str, float] = {}
        if self.path.is_file():
            with contextlib.suppress(OSError, ValueError):
                doc = json.loads(self.path.read_text())
                if doc.get("machine") == machine:
                    self.entries = {k: float(v) for k, v in doc.get("entries", {}).items()}
        self.measured = 0  # measurements made by this instance (0 on a fully cached second search)

    def __call__(self, spec: LayerSpec, cin: int, cout: int) -> float:
        key = json.dumps(spec.sized(cin, cout), sort_keys=True)
        if key not in self.entries:
            self.entries[key] = self.timer.model_ms(spec.module(cin, cout), spec.example(self.timer.batch, cin))
            self.measured += 1
        return self.entries[key]

    def save(self) -> None:
        from ..io import write_json

        with contextlib.suppress(OSError):  # a read-only home: the table is only kept for this run
            write_json(self.path, {"machine": self.machine, "entries": self.entries})


# --- the model ---------------------------------------------------------------------------------------------


def _grid(n: int, points: int, round_to: int) -> list[int]:
    vals = {n}
    for i in range(1, points):
        v = int(round(n * i / points))
        if round_to > 1:
            v = max(round_to, int(round(v / round_to)) * round_to)
        vals.add(min(n, max(1, v)))
    return sorted(vals)


def _interp(xs: list[int], ys: np.ndarray, x: float) -> float:
    return float(np.interp(x, xs, ys))


def monotone(values: np.ndarray) -> np.ndarray:
    """A layer's table (rows: output channels, columns: input channels, both ascending) with every cell at most
    every cell with as many or more channels in both: a layer with fewer channels is not slower. Timing noise is
    one-sided (interference only slows a run), so a cell slower than a larger one is a slow phase, not the layer:
    in one full run on an Intel Xeon a few such cells of MobileNet V1 28x28 at batch 1 predicted uniform 62.5 %
    slower than uniform 50 % and off by 45 %; with this envelope 15.5 %, the other models within 2 points
    (benchmarks/results/latency_monotone_xeon.md)."""
    return np.minimum.accumulate(np.minimum.accumulate(values[::-1, ::-1], axis=0), axis=1)[::-1, ::-1]


# Uniform prunings the latency model is calibrated on, with the dense model. Whole-model latency is not linear in the
# table's sum between dense and 50 %: with anchors at 50/75 % only, uniform 25 % at batch 1 was predicted 14.6 % and
# 19.0 % slow for MobileNet V1 224x224 and 10.0 % and 9.2 % fast for ResNet-50 in 2026-12-02's two runs (the second
# re-measured the 224x224 anchors within 2 %; benchmarks/results/latency_model_quick_onepass.md, _passes.md)
ANCHORS = (0.25, 0.5, 0.75)


class LatencyCost:
    """Predicted latency (ms) for per-group keep counts: interpolated per-layer tables, summed and calibrated on
    measured whole models.

    ``fractions``: a :class:`prunekit.pruning.budget.ChannelFractions` of the pruned groups; layers whose
    channels no pruned group touches are measured at their own size only."""

    kind = "latency_ms"

    def __init__(self, model: nn.Module, input_shape: Sequence[int], fractions: Any, table: LatencyTable,
                 grid: int = 6, round_to: int = 1, progress: Callable[[str], None] | None = None,
                 build: Callable[[np.ndarray], nn.Module] | None = None, anchors: Sequence[float] = ANCHORS,
                 envelope: bool = True):
        """``build(keep)``: the model pruned to ``keep`` channels per group (a plain module); with it the table's
        sum is calibrated on the dense model and on uniform pruning at each of ``anchors``, all timed
        interleaved (without it: slope 1, intercept from the dense model alone). ``envelope``: each layer's
        table through :func:`monotone` (False: the cells as measured, for comparison)."""
        self.fractions, self.table = fractions, table
        self.specs = layer_specs(model, input_shape)
        self.input_shape = tuple(input_shape)
        self.grids: list[tuple[list[int], list[int], np.ndarray]] = []
        for i, s in enumerate(self.specs):
            pin = fractions.touched(s.name, "in") or fractions.touched(s.name, "in_grouped")
            pout = fractions.touched(s.name, "out")
            cins = _grid(s.in_ch, grid, round_to) if pin else [s.in_ch]
            couts = _grid(s.out_ch, grid, round_to) if pout else [s.out_ch]
            if s.depthwise:
                values = np.array([[table(s, c, c) for c in cins]])
                couts = [0]
            else:
                values = np.array([[table(s, ci, co) for ci in cins] for co in couts])
            self.grids.append((cins, couts, monotone(values) if envelope else values))
            if progress and (i + 1) % 5 == 0:
                progress(f"latency table {i + 1}/{len(self.specs)} layers ({table.measured} measured)")
        table.save()
        sizes = np.asarray(fractions.sizes)
        self.layers_dense = self._layers(sizes)
        keeps = [np.maximum(round_to, np.round(sizes * (1 - a) / round_to) * round_to).clip(max=sizes)
                 for a in (anchors if build is not None else ())]
        # the anchors fix the whole curve: each model's fastest of passes spread over seconds (see measure_models)
        measured = measure_models([model, *(build(k) for k in keeps)], input_shape, table.timer.careful(),
                                  passes=CALIBRATION_PASSES if keeps else 1)
        self.dense_measured = self.dense = measured[0]
        points = [("dense", self.layers_dense, measured[0])]
        used = list(anchors)[:len(keeps)]  # none without ``build``
        points += [(f"uniform {a:g}", self._layers(k), m) for a, k, m in zip(used, keeps, measured[1:], strict=True)]
        self.slope, self.intercept = _fit([p[1] for p in points], [p[2] for p in points])
        self.curve = _curve([p[1] for p in points], [p[2] for p in points])
        self.calibration = [{"model": n, "layers_sum_ms": x, "measured_ms": y,
                             "line_ms": self.slope * x + self.intercept} for n, x, y in points]
        if progress and len(points) > 1:
            progress("latency model calibrated on " + ", ".join(
                f"{c['model']} ({c['measured_ms']:.3f} ms measured, {c['layers_sum_ms']:.3f} ms of layers)"
                for c in self.calibration) + ("" if self.curve else
                                             "; not monotone in the layers' sum: least-squares line used"))

    def _layer(self, i: int, cin: float, cout: float) -> float:
        cins, couts, values = self.grids[i]
        if self.specs[i].depthwise:
            return _interp(cins, values[0], cin)
        row = np.array([_interp(cins, values[j], cin) for j in range(len(couts))])
        return _interp(couts, row, cout)

    def _layers(self, keep: np.ndarray) -> float:
        fr = self.fractions(keep)
        total = 0.0
        for i, s in enumerate(self.specs):
            f_in = self.fractions.of(fr, s.name, "in_grouped" if s.groups > 1 else "in")
            f_out = self.fractions.of(fr, s.name, "out")
            total += self._layer(i, f_in * s.in_ch, f_out * s.out_ch)
        return total

    def __call__(self, keep: np.ndarray) -> float:
        x = self._layers(np.asarray(keep))
        if self.curve is None:
            return self.slope * x + self.intercept
        xs, ys = self.curve
        if x < xs[0]:  # below the smallest anchor: its segment's slope, never below zero
            return max(0.0, ys[0] + (x - xs[0]) * (ys[1] - ys[0]) / (xs[1] - xs[0]))
        if x > xs[-1]:
            return ys[-1] + (x - xs[-1]) * (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
        return float(np.interp(x, xs, ys))


def _curve(xs: Sequence[float], ys: Sequence[float]) -> tuple[list[float], list[float]] | None:
    """The calibration points as a piecewise-linear map from the layers' sum to the measured latency (through
    every measured model), or None when fewer than two points or the measurements do not rise with the sum
    (noise): then the least-squares line is used."""
    order = np.argsort(xs)
    x, y = np.asarray(xs, dtype=np.float64)[order], np.asarray(ys, dtype=np.float64)[order]
    if len(x) < 2 or np.any(np.diff(x) <= 1e-12) or np.any(np.diff(y) <= 0):
        return None
    return x.tolist(), y.tolist()


def _fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares ``y = slope * x + intercept``; slope 1 (intercept from the first point) when the points do
    not determine a sensible slope (one point, no spread, or a slope outside [0.2, 5])."""
    x, y = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    if len(x) >= 2 and np.ptp(x) > 1e-9:
        slope, intercept = np.polyfit(x, y, 1)
        if 0.2 <= slope <= 5:
            return float(slope), float(intercept)
    return 1.0, float(y[0] - x[0])


def measure_model(model: nn.Module, input_shape: Sequence[int], timer: Timer) -> float:
    """Latency (ms) of a whole model (a plain module, no masks) on the timer's runtime (:meth:`Timer.model_ms`)."""
    return _measure(lambda ex: [timer.model_ms(model, ex)], input_shape, timer)[0]


_sleep = time.sleep  # the pause between passes (tests replace it)

# Passes (``PASS_PAUSE`` s apart) over which the latency model's calibration anchors take each model's fastest: on
# a 2-core VM, phases of seconds added about 0.1 ms to every call of MobileNet V1 at 28x28 (scratch runs, 2026-12-02:
# 0.30 -> 0.44 ms dense, 0.06 -> 0.16 ms at 75 % pruned); with one pass, its 75 % anchor timed 0.19x dense and the
# same model 0.34x a second later (benchmarks/results/latency_model_quick_onepass.md)
CALIBRATION_PASSES, PASS_PAUSE = 3, 2.0


def measure_models(models: Sequence[nn.Module], input_shape: Sequence[int], timer: Timer,
                   passes: int = 1, pause: float = PASS_PAUSE) -> list[float]:
    """Latencies (ms) of whole models timed interleaved (:meth:`Timer.interleaved_ms`): compare them by ratio.
    With ``passes`` > 1, each model's fastest of that many passes, ``pause`` seconds apart: interference only
    slows a model down, and it comes in phases of seconds (see :func:`measure_ratio`)."""
    best: list[float] | None = None
    for i in range(max(1, passes)):
        if i and pause > 0:
            _sleep(pause)
        got = _measure(lambda ex: timer.interleaved_ms(models, ex), input_shape, timer)
        best = got if best is None else [min(a, b) for a, b in zip(best, got, strict=True)]
    assert best is not None
    return best


def measure_ratio(model: nn.Module, dense: nn.Module, input_shape: Sequence[int], timer: Timer,
                  near: float | None = None, band: float = 0.25, passes: int = 3, pause: float = PASS_PAUSE,
                  dense_ref: float | None = None, max_passes: int = 8) -> dict[str, Any]:
    """``model``'s latency as a ratio to ``dense``'s, the two timed interleaved. A decision taken against a ratio
    ``near`` (a budget) gets ``passes`` measurements in all, ``pause`` seconds apart, unless the first is a clear
    fit (below ``near`` by more than ``band``); the ratio is then each model's fastest pass over the other's.

    Why the fastest: interference only ever slows a model down, and on a shared machine it comes in phases of
    seconds that slow a sub-millisecond model more than a large one (``benchmarks/results/settle_after_load.md``:
    pruned/dense 0.18-0.19 in quiet phases, 0.22-0.25 in slow ones; one pruned model measured 0.34x dense, 0.23x
    minutes earlier). A median of passes taken back to back lands in whichever phase the check happens to hit;
    the lower envelope of passes spread over seconds is the model's latency on a quiet machine, which is what a
    budget is about. A miss, however clear, is confirmed before it counts; ``ratios`` records every pass.

    ``dense_ref``: the dense model's milliseconds when the budget was set. While its fastest pass here is more
    than 10 % slower, the machine is in a slow phase and passes go on, up to ``max_passes`` (a phase that outlasted
    three passes 2 s apart slowed both models by a third and the small one more: 0.26x dense instead of 0.23x)."""
    ratios, pairs = [], []
    for i in range(max(1, passes, max_passes if dense_ref else 0)):
        if i and pause > 0:
            _sleep(pause)
        ms, dense_ms = measure_models([model, dense], input_shape, timer)
        ratios.append(ms / dense_ms)
        pairs.append((ms, dense_ms))
        if near is None or near <= 0 or ratios[0] < near * (1 - band):
            break
        slow = dense_ref is not None and min(p[1] for p in pairs) > 1.1 * dense_ref
        if i + 1 >= passes and not slow:
            break
    ms, dense_ms = min(p[0] for p in pairs), min(p[1] for p in pairs)
    return {"ratio": ms / dense_ms, "model_ms": ms, "dense_ms": dense_ms, "ratios": ratios}


def _measure(fn: Callable[[torch.Tensor], list[float]], input_shape: Sequence[int], timer: Timer) -> list[float]:
    example = torch.randn(timer.batch, *input_shape, generator=torch.Generator().manual_seed(0))
    try:
        return fn(example)
    except PrunekitError:
        raise
    except Exception as e:  # an exporter/runtime failure is the user's model, reported in one line
        raise PrunekitError(f"could not measure the model's latency on {timer.runtime}: {type(e).__name__}: "
                            f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}") from None


def default_threads(threads: int | None) -> int:
    return int(threads) if threads else available_cores()
