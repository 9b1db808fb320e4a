"""Plots people would rather look at than read: importance histograms, kept channels, sparsity vs step."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_write


def _plt():
    import sys

    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:  # headless by default, but never switch a backend the caller
        matplotlib.use("Agg")                   # already uses (Jupyter's inline backend would stop displaying)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path | None) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    data = buf.getvalue()
    if path is not None:
        with atomic_write(path, "wb") as f:
            f.write(data)
    return data


def importance_histograms(groups: Sequence[dict[str, Any]], path: str | Path | None = None,
                          max_panels: int = 16) -> bytes:
    """One panel per group: importance of all channels before pruning, the kept ones highlighted.

    ``groups``: dicts with ``name``, ``scores`` (all channels, before) and ``kept`` (bool mask).
    """
    plt = _plt()
    groups = list(groups)[:max_panels]
    n = max(1, len(groups))
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax, g in zip(axes.flat, groups, strict=False):
        s = np.asarray(g["scores"], dtype=float)
        kept = np.asarray(g["kept"], dtype=bool)
        bins = np.linspace(s.min(), s.max() + 1e-12, 24)
        ax.hist(s, bins=bins, color="#c8c8c8", label=f"before ({len(s)})")
        ax.hist(s[kept], bins=bins, color="#2b7bba", label=f"kept ({int(kept.sum())})")
        ax.set_title(g["name"], fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, frameon=False, loc="upper right")  # "best" is slow on big histograms
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    fig.suptitle("channel importance per pruned layer (grey: before, blue: kept)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def weight_histogram(before: np.ndarray, after: np.ndarray, path: str | Path | None = None,
                     title: str = "weight magnitudes") -> bytes:
    """Histogram of |w| over all pruned layers, before and after pruning (log-scaled counts)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    hi = float(max(before.max(initial=0), after.max(initial=0))) or 1.0
    bins = np.linspace(0, hi, 60)
    ax.hist(before, bins=bins, color="#c8c8c8", label=f"before ({len(before):,} weights)")
    ax.hist(after, bins=bins, color="#2b7bba", alpha=0.8, label=f"after ({len(after):,} weights)")
    ax.set_yscale("log")
    ax.set_xlabel("|weight|")
    ax.set_title(title)
    ax.legend(frameon=False, fontsize=8, loc="upper right")
    fig.tight_layout()
    return _save(fig, path)


def kept_channels(rows: Sequence[dict[str, Any]], path: str | Path | None = None) -> bytes:
    """Bar chart: kept vs total channels for each pruned group."""
    plt = _plt()
    names = [r["layer"] for r in rows]
    total = np.array([r["total"] for r in rows])
    kept = np.array([r["kept"] for r in rows])
    fig, ax = plt.subplots(figsize=(max(5, 0.42 * len(rows) + 2), 3.4))
    x = np.arange(len(rows))
    ax.bar(x, total, color="#d9d9d9", label="total")
    ax.bar(x, kept, color="#2b7bba", label="kept")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("channels")
    ax.set_title("kept / total channels per pruned layer")
    ax.legend(frameon=False, fontsize=8, loc="upper right")
    fig.tight_layout()
    return _save(fig, path)


def sparsity_curve(metrics: Sequence[dict[str, Any]], path: str | Path | None = None) -> bytes:
    """Sparsity (pruning events) and test accuracy (epoch ends) against the training step."""
    plt = _plt()
    ev = [m for m in metrics if m.get("event") == "prune"]
    ep = [m for m in metrics if "test_top1" in m]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    if ev:
        xs, ys = [m["step"] for m in ev], [100 * m["sparsity"] for m in ev]
        if xs[0] > 0:  # dense until the first mask update
            xs, ys = [0, *xs], [0.0, *ys]
        last = max(m.get("step", 0) for m in metrics)
        if last > xs[-1]:  # the masks hold until the end of the run
            xs, ys = [*xs, last], [*ys, ys[-1]]
        ax.step(xs, ys, where="post", color="#d95f02", label="sparsity %")
    ax.set_xlabel("step")
    ax.set_ylabel("sparsity (%)", color="#d95f02")
    ax.set_ylim(0, 100)
    if ep:
        ax2 = ax.twinx()
        ax2.plot([m["step"] for m in ep], [m["test_top1"] for m in ep], "o-", color="#2b7bba", label="test top-1")
        ax2.set_ylabel("test top-1 (%)", color="#2b7bba")
    ax.set_title("pruning schedule and accuracy")
    fig.tight_layout()
    return _save(fig, path)


def accuracy_vs_macs(points: Sequence[dict[str, Any]], path: str | Path | None = None,
                     title: str = "top-1 vs MACs") -> bytes:
    """Scatter of top-1 accuracy against MACs, one labelled point per stage/method."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    xs = [p["macs"] for p in points] or [1.0]
    ys = [p["top1"] for p in points] or [0.0]
    dx, dy = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    for p in points:
        ax.scatter(p["macs"] / 1e6, p["top1"], s=40, color=p.get("color", "#2b7bba"), marker=p.get("marker", "o"))
        # a point just below another one at (nearly) the same MACs gets its label underneath, not on top of it
        crowded = any(q is not p and abs(q["macs"] - p["macs"]) < 0.02 * dx
                      and 0 <= q["top1"] - p["top1"] < 0.06 * dy
                      and (q["top1"] > p["top1"] or points.index(q) < points.index(p)) for q in points)
        ax.annotate(p["label"], (p["macs"] / 1e6, p["top1"]), fontsize=7, xytext=(4, -9 if crowded else 3),
                    textcoords="offset points")
    ax.set_xlabel("MACs (M)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def sensitivity_curves(sens: dict[str, Any], path: str | Path | None = None, max_lines: int = 20) -> bytes:
    """Top-1 of the model with one group pruned to each sparsity (adaptive BN), one line per group."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    groups = list(sens["groups"].items())[:max_lines]
    cmap = plt.get_cmap("viridis")
    for i, (name, rows) in enumerate(groups):
        xs = [0.0] + [100 * r["sparsity"] for r in rows]
        ys = [sens["dense"]["top1"]] + [r["top1"] for r in rows]
        ax.plot(xs, ys, "-o", ms=2.5, lw=1.2, color=cmap(i / max(1, len(groups) - 1)), label=name)
    ax.set_xlabel("sparsity of this group alone (%)")
    ax.set_ylabel("top-1 after adaptive BN (%)")
    ax.set_title("Sensitivity of each channel group", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2, frameon=False, loc="lower left")
    return _save(fig, path)


def allocation(rows: Sequence[dict[str, Any]], path: str | Path | None = None) -> bytes:
    """Kept channels per group: the searched allocation against uniform pruning at the same budget (and the
    ranked allocation, when rows have it).

    ``rows``: dicts with ``group``, ``total``, ``searched`` and ``uniform`` kept counts (``ranked`` optional)."""
    plt = _plt()
    rows = list(rows)
    bars = ["uniform", *(["ranked"] if all("ranked" in r for r in rows) and rows else []), "searched"]
    colors = {"uniform": "#9ecae1", "ranked": "#74c476", "searched": "#2b7bba"}
    w = 0.8 / len(bars)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.42 * len(rows) + 2), 3.6))
    x = np.arange(len(rows))
    for i, name in enumerate(bars):
        off = (i - (len(bars) - 1) / 2) * w
        ax.bar(x + off, [r["total"] for r in rows], w, color="#e3e3e3", label="dense" if i == 0 else None)
        ax.bar(x + off, [r[name] for r in rows], w, color=colors[name], label=name)
    ax.set_xticks(x, [r["group"] for r in rows], rotation=70, ha="right", fontsize=7)
    ax.set_ylabel("channels kept")
    ax.set_title("Kept channels per layer at the same budget: " + " vs ".join(bars), fontsize=10)
    ax.legend(fontsize=7, frameon=False, loc="upper right")
    return _save(fig, path)
