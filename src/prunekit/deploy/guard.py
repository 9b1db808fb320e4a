"""The accuracy guard: when int8 loses more top-1 than allowed, keep the layers most sensitive to quantization
in fp32 until it does not, or give up (the deploy artifact is then the fp32 model).

Sensitivity is measured, not guessed: the fully quantized QDQ model is run (graph optimisations off, so every
QuantizeLinear/DequantizeLinear is evaluated as written) on calibration images, and for every quantized
tensor the *local* quantization error is taken: activation ``x`` against ``DequantizeLinear(QuantizeLinear(x))``
in the same run (so errors of earlier layers do not accumulate into later ones), weights against their fp32
values. The error is a per-channel noise-to-signal ratio, averaged over channels: a per-tensor scale that an
outlier channel blows up wipes out the other channels, which a whole-tensor SQNR would hide. A node's score is
the sum over the tensors it quantizes (inputs, weights and output), because in QDQ a tensor stays quantized
while any node next to it is. Nodes are then kept in fp32 in order of score, 1, 2, 4, ... of them (up to
``max_fp32``), each candidate re-quantized from the same calibration ranges and its top-1 measured on the
held-out slice, until the drop is within the tolerance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

_QDQ = ("QuantizeLinear", "DequantizeLinear")


def _nsr(x: np.ndarray, y: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (noise energy, signal energy) of ``y`` as an approximation of ``x``."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    axes = tuple(i for i in range(x.ndim) if i != axis)
    return ((x - y) ** 2).sum(axis=axes), (x**2).sum(axis=axes)


def _q_range(inits: dict[str, Any], q) -> tuple[float, float]:
    """The real range a (per-tensor) QuantizeLinear represents: scale * ([qmin, qmax] - zero_point)."""
    from onnx import numpy_helper

    scale = float(np.asarray(numpy_helper.to_array(inits[q.input[1]])).reshape(-1)[0])
    if len(q.input) > 2 and q.input[2] in inits:
        zp_arr = np.asarray(numpy_helper.to_array(inits[q.input[2]]))
        info = np.iinfo(zp_arr.dtype) if zp_arr.dtype.kind in "iu" else np.iinfo(np.uint8)
        zp = float(zp_arr.reshape(-1)[0])
    else:
        info, zp = np.iinfo(np.uint8), 0.0
    return scale * (info.min - zp), scale * (info.max - zp)


def _score(noise: np.ndarray, signal: np.ndarray) -> float:
    """Mean over channels of min(1, noise/signal); silent channels (no signal, no noise) do not count."""
    live = (signal > 0) | (noise > 0)
    if not live.any():
        return 0.0
    n, s = noise[live], signal[live]
    r = np.where(s > 0, n / np.where(s > 0, s, 1.0), 1.0)
    return float(np.minimum(r, 1.0).mean())


def layer_sensitivity(qdq, fp32, batches: Sequence[np.ndarray], input_name: str,
                      chunk: int = 8) -> list[dict[str, Any]]:
    """Quantization sensitivity of every quantized node of the QDQ model ``qdq`` (an ``onnx.ModelProto``)
    quantized from ``fp32`` (the graph given to the quantizer), measured on ``batches``; highest first.

    Returns ``[{"node", "op", "layer", "score"}]``: ``node`` is the name ``nodes_to_exclude`` takes, ``layer``
    the node's weight (e.g. ``blocks.3.pw.conv.weight``) when it has one."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    g = qdq.graph
    ref_nodes = {n.name: n for n in fp32.graph.node if n.name}
    ref_inits = {i.name: i for i in fp32.graph.initializer}
    inits = {i.name for i in g.initializer}
    init_vals = {i.name: i for i in g.initializer if len(i.dims) <= 1}  # scales and zero points
    prod = {o: n for n in g.node for o in n.output}
    cons: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            cons.setdefault(i, []).append(n)

    def op_node(n) -> bool:
        return n is not None and n.op_type not in _QDQ and n.name in ref_nodes

    acts: dict[str, tuple[str, tuple[float, float], set[str]]] = {}  # y -> (x, representable range, owners)
    weights: dict[str, tuple[np.ndarray, set[str]]] = {}  # y -> (fp32 value, owners)
    for d in g.node:
        if d.op_type != "DequantizeLinear":
            continue
        src, y = d.input[0], d.output[0]
        users = [n for n in cons.get(y, []) if op_node(n)]
        if src in inits:
            for n in users:
                ref = ref_nodes[n.name]
                idx = list(n.input).index(y)
                w = ref_inits.get(ref.input[idx]) if idx < len(ref.input) else None
                if w is not None and len(w.dims) >= 2:
                    weights.setdefault(y, (numpy_helper.to_array(w), set()))[1].add(n.name)
            continue
        q = prod.get(src)
        if q is None or q.op_type != "QuantizeLinear" or q.input[1] not in init_vals:
            continue
        x = q.input[0]
        owners = {n.name for n in users}
        if op_node(prod.get(x)):
            owners.add(prod[x].name)
        if owners:
            acts[y] = (x, _q_range(init_vals, q), owners)
    if not acts and not weights:
        return []

    model = onnx.ModelProto()
    model.CopyFrom(qdq)
    have = {o.name for o in model.graph.output}
    wanted = sorted({t for y, (x, _, _) in acts.items() for t in (x, y)} | set(weights))
    for name in wanted:
        if name not in have:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    acc: dict[str, list[np.ndarray]] = {}

    def add(key: str, noise: np.ndarray, signal: np.ndarray) -> None:
        if key in acc:
            acc[key][0] += noise
            acc[key][1] += signal
        else:
            acc[key] = [noise, signal]

    first = True
    for batch in batches:
        for i in range(0, len(batch), chunk):
            out = dict(zip(names, sess.run(None, {input_name: batch[i:i + chunk]}), strict=True))
            for y, (x, (lo, hi), _) in acts.items():
                if out[x].ndim >= 2:  # against x clipped to the quantized range: a Relu/Clip folded into the
                    add(y, *_nsr(np.clip(out[x], lo, hi), out[y], 1))  # quantization is not an error
            if first:  # weights do not depend on the input
                for y, (w, _) in weights.items():
                    if out[y].shape == w.shape:  # per output channel (per element of a (1, C) weight)
                        add(y, *_nsr(w, out[y], 0 if w.shape[0] > 1 else int(np.argmax(w.shape))))
                first = False
    scores: dict[str, float] = {}
    for y, owners in [(y, o) for y, (_, _, o) in acts.items()] + [(y, o) for y, (_, o) in weights.items()]:
        if y in acc:
            s = _score(*acc[y])
            for n in owners:
                scores[n] = scores.get(n, 0.0) + s

    def layer(name: str) -> str:
        ref = ref_nodes[name]
        ws = [i for i in ref.input[1:] if i in ref_inits and len(ref_inits[i].dims) >= 2]
        return ws[0] if ws else name

    return sorted(({"node": n, "op": ref_nodes[n].op_type, "layer": layer(n), "score": s}
                   for n, s in scores.items()), key=lambda r: (-r["score"], r["node"]))


@dataclass
class GuardResult:
    """What the guard tried and kept."""

    ok: bool  # the kept int8 candidate is within the tolerance
    proto: Any  # the int8 model kept (the best candidate when none was within the tolerance)
    top1: float
    fp32_top1: float
    tolerance: float
    fp32_nodes: list[str] = field(default_factory=list)
    fp32_layers: list[str] = field(default_factory=list)
    tries: list[dict[str, Any]] = field(default_factory=list)
    ranking: list[dict[str, Any]] = field(default_factory=list)

    @property
    def drop(self) -> float:
        return self.fp32_top1 - self.top1

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "top1": self.top1, "fp32_top1": self.fp32_top1, "drop": self.drop,
                "tolerance": self.tolerance, "fp32_nodes": self.fp32_nodes, "fp32_layers": self.fp32_layers,
                "tries": self.tries, "ranking": self.ranking[:10]}

    def summary(self) -> str:
        """One sentence on what the guard did."""
        if not self.tries[1:]:
            return (f"int8 top-1 {self.top1:.2f}% vs fp32 {self.fp32_top1:.2f}% (drop {self.drop:+.2f} pt, "
                    f"tolerance {self.tolerance:g} pt)")
        n = len(self.fp32_nodes)
        first = self.tries[0]
        if self.ok:
            return (f"fully int8 lost {first['drop']:.2f} pt (> {self.tolerance:g}); keeping the {n} most sensitive "
                    f"layer{'s' if n != 1 else ''} in fp32 ({', '.join(self.fp32_layers)}) brings the drop to "
                    f"{self.drop:+.2f} pt")
        last = self.tries[-1]["fp32_nodes"]
        return (f"int8 stays more than {self.tolerance:g} pt below fp32 even with {last} "
                f"layer{'s' if last != 1 else ''} in fp32 (best drop {self.drop:+.2f} pt)")


@dataclass
class WeightRange:
    """Whether 8-bit weights replaced the 7-bit ones (``reduce_range``) chosen for this CPU, and why."""

    full_range: bool  # 8-bit weights kept
    drop_7bit: float
    drop_8bit: float | None = None  # None: not tried (7-bit was within the tolerance)
    tolerance: float = 0.5

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "summary": self.summary()}

    def summary(self) -> str:
        if self.drop_8bit is None:
            return f"7-bit weights: drop {self.drop_7bit:+.2f} pt, within the tolerance"
        verdict = "8-bit weights kept" if self.full_range else "7-bit weights kept"
        return (f"7-bit weights lost {self.drop_7bit:.2f} top-1 points (> tolerance {self.tolerance:g}), 8-bit "
                f"weights {self.drop_8bit:.2f}: {verdict}")


def weight_range(build: Callable[[bool], Any], evaluate: Callable[[Any], float], fp32_top1: float,
                 tolerance: float) -> tuple[WeightRange, Any]:
    """For a CPU whose settings use 7-bit weights (``reduce_range``, against u8*s8 saturation): when they lose
    more than ``tolerance`` top-1 points, measure the same model with 8-bit weights (``build(reduce_range)`` ->
    ModelProto, ``evaluate`` -> top-1 %) and keep whichever loses less, before any layer is kept in fp32. A
    saturating kernel shows up in the measured accuracy. Returns the verdict and the kept model."""
    p7 = build(True)
    d7 = fp32_top1 - evaluate(p7)
    if d7 <= tolerance:
        return WeightRange(False, d7, None, tolerance), p7
    p8 = build(False)
    d8 = fp32_top1 - evaluate(p8)
    return WeightRange(d8 < d7, d7, d8, tolerance), (p8 if d8 < d7 else p7)


def guard(build: Callable[[Sequence[str]], Any], evaluate: Callable[[Any], float], fp32_top1: float,
          tolerance: float, max_fp32: int, rank: Callable[[Any], list[dict[str, Any]]],
          log: Callable[[str], None] | None = None) -> GuardResult:
    """Quantize (``build(exclude)`` -> ModelProto), measure (``evaluate(proto)`` -> top-1 %), and while the drop
    exceeds ``tolerance`` keep the 1, 2, 4, ... (at most ``max_fp32``) highest-ranked nodes of ``rank(proto)``
    in fp32. Returns the first candidate within the tolerance, else the most accurate one (``ok=False``)."""
    proto = build(())
    top1 = evaluate(proto)
    tries = [{"fp32_nodes": 0, "top1": top1, "drop": fp32_top1 - top1}]
    best = GuardResult(fp32_top1 - top1 <= tolerance, proto, top1, fp32_top1, tolerance, tries=tries)
    if best.ok or max_fp32 <= 0:
        return best
    ranking = rank(proto)
    best.ranking = ranking
    limit = min(max_fp32, len(ranking))
    k = 1
    while ranking and k <= limit:
        chosen = ranking[:k]
        nodes = [r["node"] for r in chosen]
        if log:
            log(f"int8 top-1 {fp32_top1 - tries[-1]['drop']:.2f}% is {tries[-1]['drop']:.2f} pt below fp32; trying "
                f"{k} layer{'s' if k > 1 else ''} in fp32")
        proto = build(nodes)
        top1 = evaluate(proto)
        tries.append({"fp32_nodes": k, "layers": [r["layer"] for r in chosen], "top1": top1,
                      "drop": fp32_top1 - top1})
        if top1 > best.top1 or fp32_top1 - top1 <= tolerance:
            best = GuardResult(fp32_top1 - top1 <= tolerance, proto, top1, fp32_top1, tolerance, nodes,
                               [r["layer"] for r in chosen], tries, ranking)
        if best.ok:
            break
        k = limit if k < limit < 2 * k else 2 * k
    best.tries, best.ranking = tries, ranking
    return best


def write_candidate(proto, directory: Path, name: str = "candidate.onnx") -> Path:
    """Serialize a candidate model for evaluation (inside the builder's temporary directory)."""
    path = Path(directory) / name
    path.write_bytes(proto.SerializeToString())
    return path
