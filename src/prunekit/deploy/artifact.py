"""Which file to deploy, fp32 or int8, from measurements on this machine and the user's objective.

Both candidates run in the same runtime (ONNX Runtime, CPU) on the same machine, so their latencies compare.
Objectives:

* ``latency`` (default): the faster at batch 1, among the candidates within ``tolerance`` top-1 points of fp32;
* ``throughput``: the same with images/s at the throughput batch (with either, the reason also says when the other
  batch size's measurement points the other way);
* ``size``: the smaller file within the tolerance (int8), even when it is slower (which is then said);
* ``fp32`` / ``int8``: that one, whatever the measurements (quantizing here for another machine).

int8 counts as faster only when it is at least ``min_speedup`` times faster: a smaller difference is within
timing noise, and then fp32 is kept (it is the exact model). So with the default objective an int8 model slower
than its fp32 model is never the deploy artifact. A win on speed must hold when the two files are timed again
(:func:`choose_confirmed`): on a 2-core VM one timing of a 0.08 ms model in 10 alternating rounds put int8 at
1.08x faster and a re-timing of the same files minutes later at 0.87x (deploy_quick_zen5, 2026-12-02).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import unknown

OBJECTIVES = ("latency", "throughput", "size", "fp32", "int8")
FP32, INT8 = "onnxruntime-fp32", "onnxruntime-int8"


@dataclass
class Candidate:
    """One deployable file and what was measured of it on this machine."""

    runtime: str  # onnxruntime-fp32 | onnxruntime-int8
    path: str
    size_bytes: int
    top1: float | None = None  # on the held-out slice
    latency_ms: float | None = None  # batch-1 p50
    img_per_s: float | None = None  # at the throughput batch


@dataclass
class Choice:
    choice: str  # the runtime label of the deploy artifact
    path: str
    reason: str
    objective: str
    int8_speedup_b1: float | None = None  # fp32 time / int8 time (> 1: int8 faster)
    int8_speedup_throughput: float | None = None
    top1_drop: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ms(v: float) -> str:
    return f"{v:.3f} ms" if v < 10 else f"{v:.1f} ms"


def _speed(word: str, x: float | None, a: str, b: str, min_speedup: float) -> str:
    """'int8 is 1.8x faster at batch 1 (a vs b)' / '... slower ...' / '... within noise ...'."""
    if x is None:
        return f"int8 {word}: not measured"
    if x >= min_speedup:
        return f"int8 is {x:.2f}x faster {word} ({a} vs {b} fp32)"
    if x <= 1 / min_speedup:
        return f"int8 is slower {word}: {a} vs {b} fp32 ({1 / x:.2f}x slower)"
    return f"int8 and fp32 are within noise {word} ({a} vs {b}; less than {min_speedup:g}x apart)"


def choose(fp32: Candidate, int8: Candidate | None, objective: str = "latency", tolerance: float = 0.5,
           min_speedup: float = 1.05, throughput_batch: int | None = None, int8_note: str = "",
           timed_again: float | None = None) -> Choice:
    """The deploy artifact and a one-line reason built from the measurements (see the module docstring).
    ``timed_again``: int8's speed-up in a second timing (:func:`choose_confirmed`), said when int8 is chosen.

    >>> f = Candidate(FP32, "m.onnx", 1000, 90.0, 0.103, 9000)
    >>> q = Candidate(INT8, "m.int8.onnx", 300, 89.9, 0.110, 9500)
    >>> choose(f, q).choice
    'onnxruntime-fp32'
    """
    if objective not in OBJECTIVES:
        raise unknown("objective", objective, OBJECTIVES)
    if int8 is None:
        return Choice(FP32, fp32.path, f"no int8 model{': ' + int8_note if int8_note else ''}", objective)
    s1 = (fp32.latency_ms / int8.latency_ms) if fp32.latency_ms and int8.latency_ms else None
    st = (int8.img_per_s / fp32.img_per_s) if fp32.img_per_s and int8.img_per_s else None
    drop = (fp32.top1 - int8.top1) if fp32.top1 is not None and int8.top1 is not None else None
    tb = f"at batch {throughput_batch}" if throughput_batch else "at the throughput batch"
    lat = _speed("at batch 1", s1, _ms(int8.latency_ms or 0), _ms(fp32.latency_ms or 0), min_speedup)
    thr = _speed(tb, st, f"{int8.img_per_s or 0:,.0f} img/s", f"{fp32.img_per_s or 0:,.0f} img/s", min_speedup)
    acc = (f"top-1 {int8.top1:.2f}% vs {fp32.top1:.2f}% (drop {drop:+.2f} pt, tolerance {tolerance:g})"
           if drop is not None else "accuracy not measured")
    note = f"; {int8_note}" if int8_note else ""
    again = f"; {timed_again:.2f}x when timed again" if timed_again is not None else ""

    def pick(which: Candidate, why: str) -> Choice:
        return Choice(which.runtime, which.path, why + (again if which is int8 else "") + note, objective, s1, st,
                      drop)

    if objective == "fp32":
        return pick(fp32, f"fp32 requested (quantize.objective=fp32); {lat}; {acc}")
    if objective == "int8":
        return pick(int8, f"int8 requested (quantize.objective=int8); {lat}; {acc}")
    if drop is None:
        return pick(fp32, f"int8 accuracy was not measured, so fp32 is kept; {lat}")
    if drop > tolerance:
        return pick(fp32, f"int8 loses {drop:.2f} top-1 points (> tolerance {tolerance:g}); {lat}")
    if objective == "size":
        return pick(int8, f"smallest file within tolerance: int8 is {fp32.size_bytes / int8.size_bytes:.1f}x "
                          f"smaller; {lat}; {acc}")
    x, text = (s1, lat) if objective == "latency" else (st, thr)
    # the other batch size's measurement, when it points the other way: a batch-1 pick can lose throughput and back
    other_x, other_text, other = (st, thr, "throughput") if objective == "latency" else (s1, lat, "latency")
    if x is not None and x >= min_speedup:
        flip = (f"; but {other_text} (quantize.objective={other} would keep fp32)"
                if other_x is not None and other_x <= 1 / min_speedup else "")
        return pick(int8, f"{text}; {acc}{flip}")
    flip = (f"; {other_text} (quantize.objective={other} would choose int8)"
            if other_x is not None and other_x >= min_speedup else "")
    return pick(fp32, f"{text}; fp32 kept{flip}")


def choose_confirmed(fp32: Candidate, int8: Candidate | None, retime: Callable[[], tuple[Candidate, Candidate]],
                     objective: str = "latency", tolerance: float = 0.5, min_speedup: float = 1.05,
                     throughput_batch: int | None = None, int8_note: str = "") -> tuple[Choice, Choice | None]:
    """:func:`choose`, and when int8 wins on speed (objective ``latency`` or ``throughput``), ``retime()`` times
    the two files again and returns them with the new figures: int8 stays the deploy artifact only if it wins
    again. Returns (the choice, the second timing's choice or None when there was none).

    >>> f, q = Candidate(FP32, "m.onnx", 1000, 90.0, 0.077), Candidate(INT8, "m.int8.onnx", 300, 90.0, 0.072)
    >>> choice, _ = choose_confirmed(f, q, lambda: (Candidate(FP32, "m.onnx", 1000, 90.0, 0.080),
    ...                                             Candidate(INT8, "m.int8.onnx", 300, 90.0, 0.091)))
    >>> choice.choice, choice.reason.split(":")[0]
    ('onnxruntime-fp32', 'int8 looked 1.07x faster at batch 1 but not when timed again')
    """
    first = choose(fp32, int8, objective, tolerance, min_speedup, throughput_batch, int8_note)
    if first.choice != INT8 or objective not in ("latency", "throughput"):
        return first, None
    f2, q2 = retime()
    second = choose(f2, q2, objective, tolerance, min_speedup, throughput_batch, int8_note)
    latency = objective == "latency"
    x1 = first.int8_speedup_b1 if latency else first.int8_speedup_throughput
    x2 = second.int8_speedup_b1 if latency else second.int8_speedup_throughput
    where = "at batch 1" if latency else (f"at batch {throughput_batch}" if throughput_batch else
                                           "at the throughput batch")
    if second.choice == INT8:
        return choose(fp32, int8, objective, tolerance, min_speedup, throughput_batch, int8_note, x2), second
    second.reason = f"int8 looked {x1:.2f}x faster {where} but not when timed again: {second.reason}"
    return second, second
