"""Size, MACs, latency and throughput of model directories across runtimes: PyTorch eager fp32, ONNX Runtime
fp32 and ONNX Runtime int8 (CPU).

For each model directory the fp32 ONNX and int8 ONNX files are produced with the same code as ``prunekit
export`` / ``prunekit quantize`` and cached in ``<model dir>/.bench/<key>/`` (key: hash of the model files and
settings; a temporary directory when the model directory is read-only). int8 calibration uses the bundled
Fashion-MNIST training images when the model takes 1x28x28 Fashion-MNIST input, otherwise synthetic images
of the right shape (calibration quality does not change speed or size). A masked model is benchmarked in its
shrunk form (what export deploys). Timing: warm-up runs, then ``repeats`` timed runs per batch size (capped
by ``max_seconds``), with ``torch.set_num_threads(N)`` and ORT ``intra_op_num_threads=N``; ONNX Runtime fp32
and int8 are timed in alternating rounds, one session alive at a time (their ratio is what the int8 decision
rests on; idle sessions' spinning threads would take the timed one's cores). int8 settings
suit this machine's CPU (:mod:`prunekit.deploy.cpu`), as ``prunekit quantize`` chooses them by default.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._version import __version__
from ..errors import PrunekitError

RUNTIMES = ("pytorch_fp32", "ort_fp32", "ort_int8")
RUNTIME_LABELS = {"pytorch_fp32": "PyTorch eager fp32", "ort_fp32": "ONNX Runtime fp32", "ort_int8": "ONNX Runtime int8"}
CACHE_DIR = ".bench"


@dataclass
class BenchSettings:
    batches: tuple[int, ...] = (1, 32)
    threads: int | None = None  # None/0: all cores available to this process
    repeats: int = 50
    warmup: int = 5
    max_seconds: float = 20.0  # per (model, runtime, batch) measurement
    calib_samples: int = 256
    opset: int = 18
    cache_dir: str | None = None  # default: <model dir>/.bench

    def resolved_threads(self) -> int:
        return int(self.threads) if self.threads else available_cores()


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> frozenset[str]:
    """The first CPU's feature flags from ``/proc/cpuinfo`` (x86 ``flags``, ARM ``Features``); empty elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("flags", "features")):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()

def load_average() -> list[float] | None:
    """1, 5 and 15-minute load averages (a loaded machine gives slow, noisy timings); None where unknown."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):  # pragma: no cover - non-Unix
        return None


def machine_info() -> dict[str, Any]:
    import onnxruntime as ort

    from ..deploy.cpu import detect

    cpu = detect()
    return {"platform": platform.platform(), "machine": platform.machine(), "cpu": cpu_model(),
            "cpu_class": cpu.cls, "cpu_int8_flags": list(cpu.flags), "logical_cores": os.cpu_count(),
            "available_cores": available_cores(), "load_avg": load_average(),
            "python": platform.python_version(), "torch": torch.__version__, "onnxruntime": ort.__version__,
            "numpy": np.__version__, "prunekit": __version__}


def time_runs(fn: Callable[[], Any], warmup: int, repeats: int, max_seconds: float,
              min_seconds: float = 0.0) -> np.ndarray:
    """Per-run wall times (s): ``warmup`` untimed runs, then ``repeats`` timed ones, or more until
    ``min_seconds`` have passed (>= 3, capped at ``max_seconds``)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while True:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - start
        if len(times) >= 3 and elapsed > max_seconds:
            break
        if len(times) >= repeats and elapsed >= min_seconds:
            break
    return np.asarray(times)


# Each block of runs of one ONNX Runtime session lasts at least this long: 50 runs of a 0.07 ms model are 3.5 ms of
# work, and the median of such blocks followed this VM's slow phases (the demo's fine-tuned model timed 0.068-0.161
# ms in the pipeline's evaluate stage, run to run; 0.067-0.071 ms with blocks of 50 ms or more, scratch, 4 runs each)
MIN_BLOCK_SECONDS = 0.025


def alternating_rounds(factories: Sequence[Callable[[], Callable[[], Any]]], rounds: int,
                       measure: Callable[[Callable[[], Any], int], Any]) -> list[list[Any]]:
    """``rounds`` rounds; each loads every runtime in turn (``factories[i]()`` returns its run function; order
    reversed every other round), measures it (``measure(run, round)``) and lets it go before the next is loaded.
    Returns per factory the measurements of every round.

    A runtime is let go by a garbage collection after each block (a reference cycle would keep its thread pool
    alive). The objects that existed before the rounds are frozen meanwhile (``gc.freeze``), so each collection
    scans only what the rounds made: after a dynamo ONNX export a full collection took 0.43 s, and the tests' tiny
    pipeline ran in 41.5 s with full collections, 25.7 s without (benchmarks/results/make_test.txt, 2026-12-02)."""
    import gc

    out: list[list[Any]] = [[] for _ in factories]
    order = list(range(len(factories)))
    gc.freeze()
    try:
        for r in range(rounds):
            for i in order if r % 2 == 0 else order[::-1]:
                run = factories[i]()
                out[i].append(measure(run, r))
                del run
                gc.collect()  # the session's thread pool goes with it, before the next one is timed
    finally:
        gc.unfreeze()
    return out


def time_alternating(factories: dict[str, Callable[[], Callable[[], Any]]], warmup: int, repeats: int,
                     max_seconds: float, rounds: int = 3) -> dict[str, np.ndarray]:
    """Per-run wall times (s) of several ONNX Runtime models, timed in alternating rounds with one session
    alive at a time: ``factories[k]()`` loads one and returns its run function; each round times a block of
    ``repeats / rounds`` runs of each in turn (``repeats`` in all, within ``max_seconds``; more for a fast model: a
    block lasts at least ``MIN_BLOCK_SECONDS``). ONNX Runtime's idle
    thread pools spin (``session.intra_op.allow_spinning``, on by default) and take the cores of the session
    being timed on a machine with few of them (benchmarks/results/ort_live_sessions.md)."""
    rounds = max(1, min(rounds, repeats))
    per = [repeats // rounds + (r < repeats % rounds) for r in range(rounds)]  # ``repeats`` runs in all
    box = max_seconds / (rounds * max(1, len(factories)))
    keys = list(factories)
    got = alternating_rounds([factories[k] for k in keys], rounds,
                             lambda run, r: time_runs(run, warmup, per[r], box, min(MIN_BLOCK_SECONDS, box)))
    return {k: np.concatenate(t) for k, t in zip(keys, got, strict=True)}


def time_interleaved(fns: dict[str, Callable[[], Any]], warmup: int, repeats: int,
                     max_seconds: float) -> dict[str, np.ndarray]:
    """Per-run wall times (s) of several functions timed in alternating rounds (order reversed every other
    round), so that a change in machine load affects all of them alike: the fair way to compare two models
    that share one thread pool (PyTorch models in one process); ONNX Runtime sessions each have their own, and
    are compared with :func:`time_alternating`. At least 3 rounds; stops after ``repeats`` rounds or
    ``max_seconds``."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns)
    start = time.perf_counter()
    for r in range(repeats):
        for k in order if r % 2 == 0 else order[::-1]:
            t = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t)
        if r >= 2 and time.perf_counter() - start > max_seconds:
            break
    return {k: np.asarray(v) for k, v in times.items()}


# A decision between ONNX files (fp32 or int8, which int8 variant), and the report's and `prunekit bench`'s ONNX
# Runtime latencies, are timed in this many alternating rounds (of
# ``bench.repeats`` runs in all, 50 by default): on a 2-core VM the same file timed 0.77-1.17x itself in 3 rounds of
# 20 runs and 1.00-1.05x in 10 rounds of 60 (a scratch measurement on 2026-12-01, 4 tries each; its speed drifts
# over seconds, finer interleaving averages the drift out). Benchmarks time at least DECISION_MIN_RUNS runs.
DECISION_ROUNDS, DECISION_MIN_RUNS = 10, 60


def compare_onnx(files: dict[str, str | os.PathLike], batches: Sequence[int] = (1, 32), threads: int | None = None,
                 repeats: int = 50, warmup: int = 5, max_seconds: float = 20.0,
                 rounds: int = 3) -> dict[str, dict[str, Any]]:
    """Latency/throughput of ONNX files on this machine, timed in ``rounds`` alternating rounds, one session
    alive at a time (:func:`time_alternating`): ``{label: {str(batch): stats}}``.

    Every file gets the same random input; each batch size is timed for at most ``max_seconds``."""
    from .runtime import load_onnx

    shape = load_onnx(next(iter(files.values())), threads).input_shape
    g = np.random.default_rng(0)
    out: dict[str, dict[str, Any]] = {k: {} for k in files}
    for b in batches:
        x = g.standard_normal((b, *shape)).astype(np.float32)
        times = time_alternating({k: _onnx_runner(p, threads, x) for k, p in files.items()}, warmup, repeats,
                                 max_seconds, rounds)
        for k, t in times.items():
            out[k][str(b)] = stats(t, b)
    return out


def _onnx_runner(path: str | os.PathLike, threads: int | None, x: np.ndarray) -> Callable[[], Callable[[], Any]]:
    """Loads the ONNX file (a fresh session) and returns one call of it on ``x``."""
    from .runtime import load_onnx

    def load() -> Callable[[], Any]:
        rt = load_onnx(path, threads)
        return lambda: rt.predict_logits(x)

    return load


def stats(times: np.ndarray, batch: int) -> dict[str, Any]:
    p50 = float(np.percentile(times, 50))
    return {"batch": batch, "runs": int(len(times)), "p50_ms": 1e3 * p50, "p90_ms": 1e3 * float(np.percentile(times, 90)),
            "mean_ms": 1e3 * float(times.mean()), "min_ms": 1e3 * float(times.min()),
            "img_per_s": batch / p50 if p50 > 0 else None}


def _model_key(directory: Path, s: BenchSettings) -> str:
    h = hashlib.sha256()
    for name in ("model.json", "model.safetensors", "masks.safetensors"):
        f = directory / name
        if f.is_file():
            h.update(name.encode())
            h.update(hashlib.sha256(f.read_bytes()).digest())
    h.update(f"{__version__}|opset{s.opset}|calib{s.calib_samples}|{_quant_settings().label}".encode())
    return h.hexdigest()[:16]


def _quant_settings():
    """int8 settings for this machine's CPU (the same choice as ``prunekit quantize`` with defaults)."""
    from ..deploy.cpu import settings_for

    return settings_for()


def _cache_dir(directory: Path, s: BenchSettings) -> tuple[Path, bool]:
    """(cache dir, is_temporary)."""
    from ..io import check_writable_dir

    base = Path(s.cache_dir) / directory.resolve().name if s.cache_dir else directory / CACHE_DIR
    try:
        return check_writable_dir(base / _model_key(directory, s), "bench cache"), False
    except PrunekitError:
        return Path(tempfile.mkdtemp(prefix="prunekit-bench-")), True


def _calibration(meta, samples: int):
    """(batches, description): bundled Fashion-MNIST when the input matches, else synthetic images."""
    from ..data import FASHION_MNIST_CLASSES, load_data
    from ..deploy import calibration_batches

    c, h, w = meta.input_shape
    if (c, h, w) == (1, 28, 28) and meta.class_names == FASHION_MNIST_CLASSES:
        bundle, desc = load_data("bundled"), "bundled Fashion-MNIST (train)"
    else:
        bundle = load_data("synthetic", channels=c, size=[h, w], train_size=samples, test_size=2)
        desc = f"synthetic {c}x{h}x{w}"
    bundle.mean, bundle.std = list(meta.input.mean), list(meta.input.std)
    return calibration_batches(bundle, samples), desc


def prepare(directory: str | os.PathLike, s: BenchSettings, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Load a model directory, export fp32 ONNX and quantize int8 (cached). Returns paths, sizes, profile."""
    from ..cost import profile
    from ..deploy import DeployMeta, deployable, export_onnx, quantize_onnx, read_sidecar
    from ..saved import load

    directory = Path(directory)
    if not directory.is_dir():
        if directory.exists():
            raise PrunekitError(f"bench takes model directories (with model.json + model.safetensors), got a file: "
                                f"{directory}")
        raise PrunekitError(f"model directory not found: {directory}")
    loaded = load(directory)
    model, note = deployable(loaded)
    meta = DeployMeta.from_spec(loaded.spec, "onnx")
    prof = profile(model, meta.input_shape)
    cache, temporary = _cache_dir(directory, s)
    fp32, int8 = cache / "model.onnx", cache / "model.int8.onnx"
    calib_desc = None
    if not (fp32.is_file() and read_sidecar(fp32) is not None):
        if log:
            log(f"exporting {directory} to ONNX ...")
        export_onnx(model, DeployMeta.from_spec(loaded.spec, "onnx"), fp32, opset=s.opset)
    if not (int8.is_file() and read_sidecar(int8) is not None):
        if log:
            log(f"quantizing {directory} to int8 ...")
        batches, calib_desc = _calibration(meta, s.calib_samples)
        quantize_onnx(fp32, int8, batches, calib_source=calib_desc, settings=_quant_settings())
    side = read_sidecar(int8)
    qinfo = side.info.get("quantization", {}) if side else {}
    calib_desc = calib_desc or qinfo.get("calib_data")
    weights = directory / "model.safetensors"
    full = directory.resolve()
    return {"name": full.parent.name if full.name == "model" else full.name,
            "path": str(directory), "model": model, "meta": meta, "note": note, "params": prof.params,
            "macs": prof.macs, "input_shape": list(meta.input_shape),
            "sizes": {"safetensors": weights.stat().st_size, "onnx_fp32": fp32.stat().st_size,
                      "onnx_int8": int8.stat().st_size},
            "files": {"onnx_fp32": str(fp32), "onnx_int8": str(int8)}, "calibration": calib_desc,
            "quantization": {k: qinfo.get(k) for k in ("label", "cpu_class", "reason")},
            "cache": str(cache), "cache_temporary": temporary}


def bench_model(directory: str | os.PathLike, s: BenchSettings, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Benchmark one model directory on the three runtimes."""
    from .runtime import TorchRuntime, load_onnx

    prep = prepare(directory, s, log)
    threads = s.resolved_threads()
    from ..memory import activations

    torch_rt = TorchRuntime(Path(directory), prep["meta"], prep["model"].eval(), "pytorch")
    torch_rt.activations = activations(prep["model"], prep["meta"].input_shape)
    onnx = {"ort_fp32": prep["files"]["onnx_fp32"], "ort_int8": prep["files"]["onnx_int8"]}
    torch_rt.check_memory(max(s.batches), "bench")  # the largest batch must fit in every runtime, before any timing
    for f in onnx.values():
        load_onnx(f, threads).check_memory(max(s.batches), "bench")
    g = np.random.default_rng(0)
    inputs = {b: g.standard_normal((b, *prep["meta"].input_shape)).astype(np.float32) for b in s.batches}
    results: dict[str, Any] = {name: {} for name in ("pytorch_fp32", *onnx)}
    # PyTorch alone; the two ONNX Runtime models in alternating rounds, one session alive at a time, so that
    # their ratio is fair on a shared machine
    timings = (
        (("pytorch_fp32",), lambda x: time_interleaved({"pytorch_fp32": lambda: torch_rt.predict_logits(x)},
                                                        s.warmup, s.repeats, s.max_seconds)),
        (tuple(onnx), lambda x: time_alternating({n: _onnx_runner(f, threads, x) for n, f in onnx.items()},
                                                 s.warmup, s.repeats, s.max_seconds, DECISION_ROUNDS)))
    for group, timed in timings:
        if log:
            log(f"timing {prep['name']}: {', '.join(RUNTIME_LABELS[n] for n in group)} ...")
        for b, x in inputs.items():
            for n, t in timed(x).items():
                results[n][str(b)] = stats(t, b)
    if prep["cache_temporary"]:
        shutil.rmtree(prep["cache"], ignore_errors=True)
    out = {k: v for k, v in prep.items() if k not in ("model", "meta", "files", "cache_temporary")}
    out["files"] = prep["files"] if not prep["cache_temporary"] else None
    out["runtimes"] = results
    return out


def headline(m: dict[str, Any], s: BenchSettings) -> dict[str, Any]:
    """The numbers compared side by side: latency at the smallest batch, throughput at the largest."""
    b_lat, b_thr = str(min(s.batches)), str(max(s.batches))
    h: dict[str, Any] = {"params": m["params"], "macs": m["macs"], **{f"size_{k}": v for k, v in m["sizes"].items()}}
    for r in RUNTIMES:
        h[f"{r}_p50_ms"] = m["runtimes"][r][b_lat]["p50_ms"]
        h[f"{r}_p90_ms"] = m["runtimes"][r][b_lat]["p90_ms"]
        h[f"{r}_img_per_s"] = m["runtimes"][r][b_thr]["img_per_s"]
    # int8 vs fp32 within one runtime (ONNX Runtime), on this machine: > 1 means int8 is faster
    h["int8_speedup_p50"] = h["ort_fp32_p50_ms"] / h["ort_int8_p50_ms"] if h["ort_int8_p50_ms"] else None
    h["int8_speedup_img_per_s"] = (h["ort_int8_img_per_s"] / h["ort_fp32_img_per_s"]
                                   if h["ort_fp32_img_per_s"] else None)
    return h


def bench(model_dirs: Sequence[str | os.PathLike], settings: BenchSettings | None = None,
          log: Callable[[str], None] | None = None, names: Sequence[str] | None = None) -> dict[str, Any]:
    """Benchmark several model directories; ratios are relative to the first one.

    ``names`` labels the columns (default: the directory name, or its parent's for ``RUN/model``).
    """
    s = settings or BenchSettings()
    if not model_dirs:
        raise PrunekitError("no models to benchmark")
    if names is not None and len(names) != len(model_dirs):
        raise PrunekitError(f"{len(names)} names for {len(model_dirs)} models")
    if any(b < 1 for b in s.batches) or not s.batches:
        raise PrunekitError(f"batch sizes must be positive integers, got {list(s.batches)}")
    threads = s.resolved_threads()
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        models = [bench_model(d, s, log) for d in model_dirs]
        for m, name in zip(models, names or [], strict=False):
            m["name"] = str(name)
        seen: dict[str, int] = {}
        for m in models:  # unique column names
            seen[m["name"]] = seen.get(m["name"], 0) + 1
            if seen[m["name"]] > 1:
                m["name"] = f"{m['name']}#{seen[m['name']]}"
    finally:
        torch.set_num_threads(old)
    heads = [headline(m, s) for m in models]
    for m, h in zip(models, heads, strict=True):
        m["headline"] = h
    ratios = []
    for m, h in zip(models[1:], heads[1:], strict=True):
        ratios.append({"model": m["name"], "vs": models[0]["name"],
                       **{k: (v / heads[0][k] if heads[0][k] and not k.startswith("int8_speedup") else None)
                          for k, v in h.items()}})
    return {"machine": machine_info(), "settings": {**asdict(s), "threads": threads,
                                                      "latency_batch": min(s.batches),
                                                      "throughput_batch": max(s.batches)},
            "models": models, "ratios": ratios}


# --- formatting ------------------------------------------------------------------------------------


def _fmt_bytes(n: float) -> str:
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def _rows(result: dict[str, Any]) -> list[tuple[str, str, Callable[[float], str]]]:
    from ..cost import human

    st = result["settings"]
    bl, bt = st["latency_batch"], st["throughput_batch"]
    rows = [("params", "params", lambda v: human(v)), ("MACs", "macs", lambda v: human(v)),
            ("model.safetensors", "size_safetensors", _fmt_bytes), ("ONNX fp32 file", "size_onnx_fp32", _fmt_bytes),
            ("ONNX int8 file", "size_onnx_int8", _fmt_bytes)]
    for r in RUNTIMES:
        lab = RUNTIME_LABELS[r]
        rows.append((f"{lab} p50 @{bl} (ms)", f"{r}_p50_ms", lambda v: f"{v:.3f}"))
        rows.append((f"{lab} p90 @{bl} (ms)", f"{r}_p90_ms", lambda v: f"{v:.3f}"))
        rows.append((f"{lab} @{bt} (img/s)", f"{r}_img_per_s", lambda v: f"{v:,.0f}"))
    rows.append((f"ORT int8 speed-up vs ORT fp32 @{bl}", "int8_speedup_p50", lambda v: f"{v:.2f}x"))
    rows.append((f"ORT int8 speed-up vs ORT fp32 @{bt}", "int8_speedup_img_per_s", lambda v: f"{v:.2f}x"))
    return rows


def _table(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    models, ratios = result["models"], result["ratios"]
    header = ["metric", models[0]["name"]]
    for m in models[1:]:
        header += [m["name"], f"{m['name']}/{models[0]['name']}"]
    body = []
    for label, key, fmt in _rows(result):
        f = lambda v, fmt=fmt: "-" if v is None else fmt(v)  # noqa: E731
        row = [label, f(models[0]["headline"][key])]
        for m, r in zip(models[1:], ratios, strict=True):
            v = r.get(key)
            row += [f(m["headline"][key]), "-" if v is None else f"{v:.3g}x"]
        body.append(row)
    return header, body


def format_table(result: dict[str, Any]) -> str:
    """A fixed-width table: one column per model, plus a ratio column (model / first model) for the others."""
    header, body = _table(result)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))  # noqa: E731
    mach = result["machine"]
    st = result["settings"]
    out = [line(header), "-" * len(line(header)), *[line(r) for r in body], "",
           f"machine: {mach['cpu']} ({mach.get('cpu_class', '?')}, {mach['available_cores']}/"
           f"{mach['logical_cores']} cores), {mach['platform']}; torch {mach['torch']}, onnxruntime "
           f"{mach['onnxruntime']}; threads {st['threads']}, up to {st['repeats']} timed runs after {st['warmup']} "
           f"warm-up; load average {mach.get('load_avg')}"]
    q = result["models"][0].get("quantization") or {}
    if q.get("label"):
        out.append(f"int8: {q['label']} QDQ for {q.get('reason')}")
    for m in result["models"]:
        if m.get("note"):
            out.append(f"note ({m['name']}): benchmarked the shrunk form of a masked model")
    return "\n".join(out)


def format_markdown(result: dict[str, Any]) -> str:
    header, body = _table(result)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)
