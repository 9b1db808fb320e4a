"""int8 only where it is faster: int8 variants that keep the model's first layers in fp32, timed on this machine.

In a small or pruned CNN the first layers often run *slower* in int8 than in fp32: a convolution with 1-3 input
channels and depthwise convolutions at the highest resolution get little from ONNX Runtime's int8 kernels and pay
for the layout changes around them, while the 1x1 convolutions further on gain 2-4x
(``benchmarks/results/int8_layers.md``: the 75 %-pruned MobileNet V1 at 224x224 ran 0.93x as fast in int8 as in
fp32 at batch 1, its first convolution at 0.54x). So besides the fully int8 model, the variants that keep the
first 1, 2, 4, ... (up to ``max_layers``) weighted layers in fp32 (graph order) are built from the same
calibration ranges and timed interleaved with it, and the fastest is kept when it beats the fully int8 model by
at least ``min_speedup`` twice: in that timing (10 alternating rounds) and in a fresh one of the two alone (the
fastest of several noisy timings is biased towards luck: see ``inference.bench.DECISION_ROUNDS``). A smaller gap
is timing noise: then the fully int8 model stays, being the smaller; likewise among variants within that band of
the fastest, the one with the fewest fp32 layers is kept.

Selection and the fp32-vs-int8 deploy decision are made on separate measurements (the deploy decision times
again), so picking the fastest of several noisy timings cannot by itself make int8 look faster than fp32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def weighted_nodes(graph) -> list[tuple[str, str]]:
    """``(node name, weight name)`` of every Conv/ConvTranspose/Gemm/MatMul with a constant weight, in graph
    (topological) order: the nodes ``nodes_to_exclude`` takes and the layer each belongs to."""
    inits = {i.name for i in graph.initializer if len(i.dims) >= 2}
    out = []
    for n in graph.node:
        if n.op_type in WEIGHTED_OPS and n.name:
            w = next((i for i in n.input[1:] if i in inits), None)
            if w is not None:
                out.append((n.name, w))
    return out


def prefix_sizes(n_weighted: int, max_layers: int) -> list[int]:
    """1, 2, 4, ... up to ``max_layers`` (included), always leaving at least one weighted layer in int8."""
    top = min(max_layers, n_weighted - 1)
    ks, k = [], 1
    while k <= top:
        ks.append(k)
        k *= 2
    if top >= 1 and ks[-1] != top:
        ks.append(top)
    return ks


@dataclass
class MixedResult:
    """The int8 variant kept and what was timed."""

    proto: Any  # the int8 model kept
    fp32_prefix: int  # how many leading weighted layers it keeps in fp32 (0: the fully int8 model)
    layers: list[str] = field(default_factory=list)  # their weights, e.g. ["conv1.weight"]
    nodes: list[str] = field(default_factory=list)  # their ONNX node names
    batch: int = 1
    tried: list[dict[str, Any]] = field(default_factory=list)  # {"fp32_prefix", "layers", "p50_ms"}
    fp32_ms: float | None = None  # the fp32 model in the same timing rounds
    min_speedup: float = 1.05
    confirm: dict[str, Any] | None = None  # the second, independent timing of the fastest variant vs fully int8
    rejected: str = ""  # why a confirmed faster variant was not kept (e.g. it measured less accurate)

    def to_dict(self) -> dict[str, Any]:
        return {"fp32_prefix": self.fp32_prefix, "layers": self.layers, "batch": self.batch, "tried": self.tried,
                "confirm": self.confirm, "rejected": self.rejected, "fp32_ms": self.fp32_ms,
                "min_speedup": self.min_speedup, "summary": self.summary()}

    def reject(self, base: Any, why: str) -> None:
        """Go back to ``base`` (the fully int8 model) and say why."""
        self.rejected = why
        self.proto, self.fp32_prefix, self.layers, self.nodes = base, 0, [], []

    def summary(self) -> str:
        """One sentence on what was timed and kept."""
        base = self.tried[0]["p50_ms"]
        ks = ", ".join(str(t["fp32_prefix"]) for t in self.tried[1:])
        at = f"at batch {self.batch}"
        if self.fp32_prefix:
            c = self.confirm or {}
            got, base = c.get("p50_ms"), c.get("fully_int8_ms")
            n = self.fp32_prefix
            return (f"keeping the first {n} layer{'s' if n != 1 else ''} in fp32 ({', '.join(self.layers)}) made "
                    f"int8 {base / got:.2f}x faster than fully int8 {at} ({got:.3f} vs {base:.3f} ms, timed twice)")
        best = min(self.tried[1:], key=lambda t: t["p50_ms"], default=None)
        if best is None:
            return "fully int8 (no layer prefix to try)"
        if self.rejected:
            return f"fully int8 kept: {self.rejected}"
        if self.confirm:
            c = self.confirm
            n = c["fp32_prefix"]
            return (f"fully int8 kept: keeping the first {n} layer{'s' if n != 1 else ''} in fp32 looked faster "
                    f"({best['p50_ms']:.3f} vs {base:.3f} ms) but not when timed again ({c['p50_ms']:.3f} vs "
                    f"{c['fully_int8_ms']:.3f} ms {at})")
        return (f"fully int8 kept: keeping the first {ks} layers in fp32 was not {self.min_speedup:g}x faster {at} "
                f"(best {best['p50_ms']:.3f} ms with {best['fp32_prefix']} vs {base:.3f} ms)")


def fastest_prefix(build: Callable[[Sequence[str]], Any], time_ms: Callable[[dict[str, Any], bool], dict[str, float]],
                   base: Any, base_exclude: Sequence[str], nodes: Sequence[tuple[str, str]], max_layers: int,
                   min_speedup: float = 1.05, batch: int = 1,
                   log: Callable[[str], None] | None = None) -> MixedResult:
    """Time ``base`` (an int8 model with ``base_exclude`` in fp32) against variants that also keep the first
    1, 2, 4, ... of ``nodes`` (:func:`weighted_nodes` of the graph ``build`` quantizes) in fp32, and return the
    fastest if it beats ``base`` by ``min_speedup``, else ``base``.

    ``build(exclude)`` -> ModelProto; ``time_ms({key: proto}, with_fp32)`` -> ``{key: p50 ms}`` (one interleaved
    timing of all of them, plus ``"fp32"`` when ``with_fp32`` and the caller times the fp32 model alongside: asked
    for the first timing only)."""
    already = set(base_exclude)
    protos: dict[str, Any] = {"0": base}
    chosen_nodes: dict[str, list[tuple[str, str]]] = {"0": []}
    seen = {frozenset(already)}
    for k in prefix_sizes(len(nodes), max_layers):
        ex = already | {n for n, _ in nodes[:k]}
        if frozenset(ex) in seen:
            continue
        seen.add(frozenset(ex))
        protos[str(k)] = build([*base_exclude, *(n for n, _ in nodes[:k] if n not in already)])
        chosen_nodes[str(k)] = list(nodes[:k])
    res = MixedResult(base, 0, batch=batch, min_speedup=min_speedup)
    if len(protos) == 1:
        res.tried = [{"fp32_prefix": 0, "layers": [], "p50_ms": None}]
        return res
    if log:
        log(f"timing int8 with the first {', '.join(list(protos)[1:])} layers in fp32 against fully int8 "
            f"(batch {batch}) ...")
    t = time_ms(protos, True)
    res.fp32_ms = t.get("fp32")
    res.tried = [{"fp32_prefix": int(k), "layers": [w for _, w in chosen_nodes[k]], "p50_ms": t[k]} for k in protos]
    fastest = min(t[k] for k in protos)
    # gaps under min_speedup are noise: among the variants that close to the fastest, the fewest fp32 layers
    best = min((k for k in protos if k != "0" and t[k] <= fastest * min_speedup), key=int, default="0")
    if best != "0" and t["0"] / t[best] >= min_speedup:
        # the fastest of several noisy timings is biased towards luck: a fresh round of the two must agree
        c = time_ms({"0": base, best: protos[best]}, False)
        res.confirm = {"fp32_prefix": int(best), "p50_ms": c[best], "fully_int8_ms": c["0"]}
        if c["0"] / c[best] >= min_speedup:
            res.proto, res.fp32_prefix = protos[best], int(best)
            res.layers = [w for _, w in chosen_nodes[best]]
            res.nodes = [n for n, _ in chosen_nodes[best]]
    return res
