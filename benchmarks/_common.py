"""Helpers shared by the training/pruning benchmarks (train_fmnist, prune_fmnist, peers).

Not part of the library: benchmark scripts import it as ``_common`` (their own directory is on ``sys.path``
when run as ``python benchmarks/X.py``).
"""

from __future__ import annotations

import contextlib
import math
import os
import shlex
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
WORK = RESULTS / "_work"
DEFAULT_DATA_DIRS = ("/work/shared/data/fashion-mnist",)  # tried after --data-dir / $PRUNEKIT_DATA / system


def command_line() -> str:
    """The command that ran this script, as it would be typed from the current directory."""
    exe = sys.executable
    try:
        rel = os.path.relpath(exe)
        exe = rel if not rel.startswith("../..") else exe
    except ValueError:
        pass
    return " ".join(shlex.quote(a) for a in [exe, *sys.argv])


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - non-Unix
        return None


class LoadSampler:
    """Samples the 1-minute load average every ``every`` seconds in a daemon thread (machine sharing record)."""

    def __init__(self, every: float = 30.0):
        self.every, self.samples = every, []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            la = loadavg()
            if la:
                self.samples.append(la[0])
            self._stop.wait(self.every)

    def __enter__(self) -> LoadSampler:
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()

    def summary(self) -> dict[str, Any]:
        s = self.samples
        if not s:
            return {}
        return {"load1_mean": round(float(np.mean(s)), 2), "load1_min": round(float(min(s)), 2),
                "load1_max": round(float(max(s)), 2), "samples": len(s), "every_s": self.every}


def setup_threads(threads: int | None) -> int:
    if threads:
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()


def provenance() -> dict[str, Any]:
    """Which code produced a result: the git commit (and whether the working tree differed from it), the package
    versions and the machine. Every results file records it."""
    import importlib.metadata as md
    import subprocess

    from prunekit.inference.bench import machine_info

    def git(*args: str) -> str:  # not stripped: porcelain lines start with a status column that may be blank
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    versions = {}
    for pkg in ("torch", "torchvision", "onnx", "onnxruntime", "numpy", "safetensors", "timm", "torch-pruning"):
        with contextlib.suppress(md.PackageNotFoundError):
            versions[pkg] = md.version(pkg)
    dirty = [ln[3:] for ln in git("status", "--porcelain", "--untracked-files=no").splitlines()]
    return {"git_commit": git("rev-parse", "HEAD").strip() or None, "git_dirty": dirty, "versions": versions,
            "machine": machine_info(), "recorded": now()}


def provenance_line(p: dict[str, Any]) -> str:
    """One Markdown line naming the commit, key versions and machine of a result."""
    m, v = p["machine"], p["versions"]
    commit = (p.get("git_commit") or "unknown")[:10] + (" + local changes" if p.get("git_dirty") else "")
    return (f"*Commit {commit}; torch {v.get('torch', '?')}, onnxruntime {v.get('onnxruntime', '?')}; {m['cpu']} "
            f"({m['available_cores']} cores), {p['recorded']}.*")


def environment(device: torch.device) -> dict[str, Any]:
    """Machine, software, device, load and provenance: recorded with every result."""
    from prunekit.inference.bench import machine_info

    env = {**machine_info(), "device": str(device), "torch_threads": torch.get_num_threads(), "load_start": loadavg(),
           "provenance": provenance()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    import contextlib
    from importlib import metadata

    with contextlib.suppress(metadata.PackageNotFoundError):  # its module lacks __version__ in some releases
        env["torch_pruning"] = metadata.version("torch-pruning")
    return env


def find_data_dir(data_dir: str | None) -> str | None:
    if data_dir or os.environ.get("PRUNEKIT_DATA"):
        return data_dir
    for d in DEFAULT_DATA_DIRS:
        if Path(d).is_dir():
            return d
    return None  # the library's own search (system dataset) decides


def load_fmnist(data_dir: str | None, train_subset: int = 0, test_subset: int = 0, seed: int = 0):
    """Full Fashion-MNIST, optionally a class-balanced random subset of the splits (fixed by ``seed``)."""
    from prunekit.data import DataBundle, TensorSplit, load_data

    bundle = load_data("fashion-mnist", find_data_dir(data_dir))

    def sub(split: TensorSplit, n: int, salt: int) -> TensorSplit:
        if not n or n >= len(split):
            return split
        g = torch.Generator().manual_seed(seed * 1000 + salt)
        labels = split.labels
        classes = labels.unique()
        per = n // len(classes)
        idx = []
        for c in classes:
            ci = torch.nonzero(labels == c).flatten()
            idx.append(ci[torch.randperm(len(ci), generator=g)[:per]])
        idx = torch.cat(idx).sort().values
        return TensorSplit(split.images[idx].contiguous(), labels[idx].clone())

    train, test = sub(bundle.train, train_subset, 1), sub(bundle.test, test_subset, 2)
    notes = {"train_images": len(train), "test_images": len(test), "subset_seed": seed,
             "train_subset": bool(train_subset and train_subset < len(bundle.train)),
             "test_subset": bool(test_subset and test_subset < len(bundle.test))}
    return DataBundle(bundle.name, train, test, bundle.class_names, bundle.channels, bundle.size, bundle.mean,
                      bundle.std, bundle.source, notes)


def mobilenet(width: float, seed: int, dropout: float = 0.2):
    from prunekit.models import create_model

    torch.manual_seed(seed)
    return create_model("mobilenet_v1", width=width, num_classes=10, in_channels=1, small_input=True,
                        dropout=dropout)


def model_spec(data, width: float, extra: dict | None = None):
    from prunekit.models import ModelSpec
    from prunekit.steps import input_spec

    spec = ModelSpec("mobilenet_v1", {"width": width, "num_classes": 10, "in_channels": 1, "small_input": True,
                                      "dropout": 0.2}, input_spec(data), list(data.class_names))
    spec.extra = dict(extra or {})
    return spec


def params_macs(model) -> dict[str, int]:
    from prunekit.cost import profile
    from prunekit.pruning import strip

    p = profile(strip(model, copy=True).cpu(), (1, 28, 28))
    return {"params": p.params, "macs": p.macs}


def width_for_params(target: int, lo: float = 0.05, hi: float = 1.5) -> float:
    """The width multiplier (2 decimals) whose MobileNet V1 (28x28x1, 10 classes) has the parameter count
    closest to ``target``."""
    from prunekit.models import create_model

    def n(w: float) -> int:
        m = create_model("mobilenet_v1", width=w, num_classes=10, in_channels=1, small_input=True)
        return sum(p.numel() for p in m.parameters())

    best = None
    for w100 in range(int(lo * 100), int(hi * 100) + 1):
        w = w100 / 100
        d = abs(n(w) - target)
        if best is None or d < best[0]:
            best = (d, w)
        elif n(w) > target * 1.5:
            break
    return best[1]


def epoch_rows(metrics_path: Path) -> list[dict]:
    from prunekit.train import read_metrics

    return [r for r in read_metrics(metrics_path) if "test_top1" in r] if metrics_path.exists() else []


def train_summary(result: dict, metrics_path: Path) -> dict[str, Any]:
    """What a ``fit`` call did: final test top-1/top-5, wall time, training img/s, per-epoch curve."""
    rows = epoch_rows(metrics_path)
    train_s = sum(r["seconds"] for r in rows)
    imgs = sum(r["img_per_s"] * r["seconds"] for r in rows)
    return {"top1": result["test"]["top1"], "top5": result["test"]["top5"], "test_loss": result["test"]["loss"],
            "wall_s": result["seconds"], "train_s": train_s, "img_per_s": imgs / train_s if train_s else None,
            "steps": result["steps"], "epochs_done": rows[-1]["epoch"] if rows else 0.0,
            "curve": [{k: r[k] for k in ("epoch", "test_top1", "train_loss", "img_per_s") if k in r} for r in rows]}


def binomial_se(p_percent: float, n: int) -> float:
    p = p_percent / 100
    return 100 * math.sqrt(max(p * (1 - p), 1e-12) / max(n, 1))


def seed_se(values: list[float]) -> float:
    """The standard error of the mean over seeds, std (n - 1) / sqrt(n): half the spread at 2 seeds; 0 at one."""
    n = len(values)
    return float(np.std(values, ddof=1) / math.sqrt(n)) if n > 1 else 0.0


def write_results(prefix: Path, doc: dict, markdown: str) -> tuple[Path, Path]:
    """Atomic writes of PREFIX.json and PREFIX.md."""
    from prunekit.io import write_json, write_text

    prefix.parent.mkdir(parents=True, exist_ok=True)
    if prefix.suffix in (".json", ".md"):
        prefix = prefix.with_suffix("")
    j, m = prefix.with_name(prefix.name + ".json"), prefix.with_name(prefix.name + ".md")  # "x_lr0.1" keeps its dot
    write_json(j, doc)
    write_text(m, markdown)
    return j, m


def fmt_int(n: float | None) -> str:
    return "-" if n is None else f"{int(n):,}"


def fmt_m(n: float | None, digits: int = 2) -> str:
    return "-" if n is None else f"{n / 1e6:.{digits}f} M"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)
