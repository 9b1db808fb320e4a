"""Where does int8 win and lose, layer by layer? ONNX Runtime's profiler on an fp32 model and its int8 form.

``deploy_quick.md`` finds int8 2.5-2.7x faster than fp32 for MobileNet V1 1.0 at 224x224 but only 1.0-1.4x for
its 75 %-pruned form. This script times every convolution of both files with ONNX Runtime's profiler (one
session at a time, ``--runs`` profiled runs after a warm-up, batch 1 and ``--batch``) and lines them up: the i-th
``Conv`` of the fp32 graph with the i-th ``QLinearConv`` of the int8 graph (prunekit's QDQ files quantize every
convolution, in graph order). Everything that is not a convolution (input quantization, layout transposes,
pooling, the classifier) is summed as "other".

Under each model's tables, the bounds this breakdown puts on the whole model (Amdahl): the int8 speed-up if every
1x1 convolution took no time at all (the rest as measured), and if the first convolution ran at its fp32 time
(mixed precision, without the quantize/dequantize it would add), and the most *any* choice of which convolutions
run in int8 could give (each at the faster of its two times): if that is under a goal, no ``--fp32-prefix`` or
per-layer precision choice reaches it on this machine. Profiled times include the profiler's own overhead (a few microseconds per node) and
are therefore compared with each other, not with ``deploy_quick.md``'s latencies.

    python benchmarks/deploy_bench.py --quick      # first: trains and writes the models (about 30 min)
    python benchmarks/int8_layers.py               # ~3 min on 2 cores: the 224x224 dense and pruned models
    python benchmarks/int8_layers.py --dir DIR ... # any directories holding model.onnx and model.int8.onnx

Where the shipped int8 file keeps its first layers in fp32 (``--fp32-prefix``), deploy_bench also writes the fully
int8 one (``model.full.int8.onnx``); that one is profiled, so that every row compares an fp32 convolution with an
int8 one.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, LoadSampler, environment, log, provenance_line, write_results  # noqa: E402

DEFAULT_DIRS = [RESULTS / "_work" / "deploy_quick" / "224_2048_1000_1_1_16_0.03_0.2" / d for d in ("dense", "pruned")]


def conv_shapes(path: Path) -> tuple[list[int], list[dict]]:
    """The input's (C, H, W) and every Conv of an fp32 ONNX file in graph order: input/output channels, groups,
    output size."""
    import onnx

    m = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    chw = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim][1:]
    init = {i.name: list(i.dims) for i in m.graph.initializer}
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in m.graph.value_info}
    out = []
    for n in m.graph.node:
        if n.op_type != "Conv":
            continue
        w = init[n.input[1]]
        groups = next((a.i for a in n.attribute if a.name == "group"), 1)
        hw = shapes.get(n.output[0], [0, 0, 0, 0])[-2:]
        out.append({"in": w[1] * groups, "out": w[0], "groups": groups, "kernel": w[2], "hw": f"{hw[0]}x{hw[1]}"})
    return chw, out


def profile(path: Path, x: np.ndarray, threads: int, runs: int) -> tuple[list[float], float, float]:
    """Per-convolution microseconds per run (execution order), the rest's, and the median wall time (ms)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()  # prunekit.deploy.onnx.ort_session's settings, with the profiler on
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "p")
        sess = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x}
        for _ in range(5):
            sess.run(None, feed)
        walls = []
        for _ in range(runs):
            t = time.perf_counter()
            sess.run(None, feed)
            walls.append(time.perf_counter() - t)
        events = json.loads(Path(sess.end_profiling()).read_text())
        del sess
    per_node: dict[str, float] = collections.defaultdict(float)
    op: dict[str, str] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_node[e["name"]] += e["dur"]
            op[e["name"]] = e["args"]["op_name"]
    n = runs + 5
    convs = [per_node[k] / n for k in per_node if op[k] in ("Conv", "QLinearConv", "FusedConv", "NhwcFusedConv")]
    other = sum(per_node[k] / n for k in per_node if op[k] not in ("Conv", "QLinearConv", "FusedConv",
                                                                  "NhwcFusedConv"))
    return convs, other, 1e3 * float(np.median(walls))


def spread(xs: list[float]) -> str:
    """'min-max' of ratios, e.g. '1.12-1.30x'."""
    return f"{min(xs):.2f}-{max(xs):.2f}x"


def int8_file(d: Path) -> Path:
    """The fully int8 file of a model directory: deploy_bench's ``model.full.int8.onnx`` when the shipped
    ``model.int8.onnx`` keeps its first layers in fp32, else ``model.int8.onnx``."""
    full = d / "model.full.int8.onnx"
    return full if full.is_file() else d / "model.int8.onnx"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", action="append", type=Path, help="directory with model.onnx and model.int8.onnx "
                    "(repeatable; default: deploy_bench --quick's 224x224 dense and pruned models)")
    ap.add_argument("--batch", type=int, default=32, help="the throughput batch (batch 1 is always profiled)")
    ap.add_argument("--runs", type=int, default=20, help="profiled runs per model, batch and round")
    ap.add_argument("--rounds", type=int, default=5, help="rounds, each profiling the fp32 and the int8 file in "
                    "alternating order (per-layer times: the median over rounds)")
    ap.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (default: every available core)")
    ap.add_argument("--out", default=str(RESULTS / "int8_layers"))
    args = ap.parse_args(argv)
    from prunekit.inference.bench import available_cores

    dirs = args.dir or DEFAULT_DIRS
    for d in dirs:
        for f in ("model.onnx", "model.int8.onnx"):
            if not (d / f).is_file():
                raise SystemExit(f"error: {d / f} not found (run benchmarks/deploy_bench.py --quick first, or pass "
                                 "--dir)")
    threads = args.threads or available_cores()
    env = environment(torch.device("cpu"))
    t0 = time.perf_counter()
    models = []
    with LoadSampler() as ls:
        for d in dirs:
            chw, shapes = conv_shapes(d / "model.onnx")
            per_batch = {}
            for b in sorted({1, args.batch}):
                x = np.random.default_rng(0).standard_normal((b, *chw)).astype(np.float32)
                rounds = []  # fp32 and int8 profiled in alternating order, one session alive at a time
                for k in range(args.rounds):
                    order = [("fp32", d / "model.onnx"), ("int8", int8_file(d))]
                    got = {name: profile(f, x, threads, args.runs) for name, f in (order if k % 2 == 0
                                                                                   else order[::-1])}
                    if not (len(got["fp32"][0]) == len(got["int8"][0]) == len(shapes)):
                        raise SystemExit(f"error: {d}: {len(got['fp32'][0])} fp32 convolutions, "
                                         f"{len(got['int8'][0])} int8 ones, {len(shapes)} in the graph: cannot "
                                         "line them up")
                    rounds.append(got)

                def med(name: str, i: int, rounds: list = rounds) -> np.ndarray:
                    return np.median(np.array([r[name][i] for r in rounds], dtype=float), axis=0)

                f_conv, i_conv = med("fp32", 0), med("int8", 0)
                layers = [{**s, "fp32_us": float(f), "int8_us": float(i)}
                          for s, f, i in zip(shapes, f_conv, i_conv, strict=True)]
                per_round = [{"fp32_us": sum(r["fp32"][0]) + r["fp32"][1], "int8_us": sum(r["int8"][0]) + r["int8"][1],
                              "best_per_layer": (sum(r["fp32"][0]) + r["fp32"][1]) / max(
                                  sum(min(a, c) for a, c in zip(r["fp32"][0], r["int8"][0], strict=True))
                                  + min(r["fp32"][1], r["int8"][1]), 1e-9)} for r in rounds]
                f_ms, i_ms = float(med("fp32", 2)), float(med("int8", 2))
                per_batch[b] = {"layers": layers, "fp32_other_us": float(med("fp32", 1)),
                                "int8_other_us": float(med("int8", 1)), "fp32_wall_ms": f_ms, "int8_wall_ms": i_ms,
                                "rounds": per_round}
                log(f"{d.name} batch {b}: fp32 {f_ms:.3f} ms, int8 {i_ms:.3f} ms (wall, profiled)")
            models.append({"dir": str(d), "name": d.name, "int8_file": int8_file(d).name, "input": chw,
                           "batches": per_batch})
    doc = {"command": " ".join(sys.argv), "environment": env, "provenance": env.get("provenance"),
           "settings": {"batch": args.batch, "runs": args.runs, "rounds": args.rounds,
                                                           "threads": threads}, "models": models,
           "load": ls.summary(), "seconds": round(time.perf_counter() - t0, 1)}
    lines = ["# int8 vs fp32 layer by layer (ONNX Runtime profiler)", "", provenance_line(doc["provenance"]), "",
             f"{threads} ORT threads; {args.rounds} rounds, each profiling the fp32 and the int8 file (alternating which "
             f"goes first) for {args.runs} runs after 5 warm-up runs, one session alive at a time; per-layer "
             "times are the median over rounds; "
             f"load average over the run {doc['load']}; {doc['seconds']:.0f} s. Microseconds per run as the "
             "profiler reports them (its overhead included).", ""]
    for m in models:
        for b, r in m["batches"].items():
            rnd = r["rounds"]
            f_tot = sum(x["fp32_us"] for x in r["layers"]) + r["fp32_other_us"]
            i_tot = sum(x["int8_us"] for x in r["layers"]) + r["int8_other_us"]
            lines += [f"## {m['name']} ({'x'.join(map(str, m['input']))}), batch {b} ({m['int8_file']})", "",
                      f"Whole model: fp32 {f_tot:.0f} us, int8 {i_tot:.0f} us profiled = {f_tot / i_tot:.2f}x "
                      f"(wall time under the profiler {r['fp32_wall_ms']:.3f} / {r['int8_wall_ms']:.3f} ms; the "
                      f"whole-model ratio round by round: {spread([x['fp32_us'] / x['int8_us'] for x in rnd])}).",
                      "",
                      "| # | conv | output | fp32 us | int8 us | int8 speed-up | share of fp32 time |",
                      "|---:|---|---|---:|---:|---:|---:|"]
            for k, x in enumerate(r["layers"]):
                kind = "depthwise" if x["groups"] == x["in"] == x["out"] and x["groups"] > 1 else \
                    f"{x['kernel']}x{x['kernel']}"
                lines.append(f"| {k} | {x['in']}->{x['out']} {kind} | {x['hw']} | {x['fp32_us']:.0f} | "
                             f"{x['int8_us']:.0f} | {x['fp32_us'] / max(x['int8_us'], 1e-9):.2f}x | "
                             f"{100 * x['fp32_us'] / f_tot:.0f}% |")
            lines.append(f"| | everything else | | {r['fp32_other_us']:.0f} | {r['int8_other_us']:.0f} | "
                         f"{r['fp32_other_us'] / max(r['int8_other_us'], 1e-9):.2f}x | "
                         f"{100 * r['fp32_other_us'] / f_tot:.0f}% |")
            kinds: dict[str, list[float]] = {}
            for k, x in enumerate(r["layers"]):
                kind = "first convolution" if k == 0 else "depthwise" if x["groups"] > 1 else \
                    "1x1" if x["kernel"] == 1 else "other convolutions"
                kinds.setdefault(kind, [0.0, 0.0])
                kinds[kind][0] += x["fp32_us"]
                kinds[kind][1] += x["int8_us"]
            kinds["everything else"] = [r["fp32_other_us"], r["int8_other_us"]]
            lines += ["", "| layers | fp32 us | int8 us | int8 speed-up | share of fp32 time | share of int8 time |",
                      "|---|---:|---:|---:|---:|---:|"]
            for kind, (f, i) in kinds.items():
                lines.append(f"| {kind} | {f:.0f} | {i:.0f} | {f / max(i, 1e-9):.2f}x | {100 * f / f_tot:.0f}% | "
                             f"{100 * i / i_tot:.0f}% |")
            pw = kinds.get("1x1", [0.0, 0.0])[1]
            first_f, first_i = kinds.get("first convolution", [0.0, 0.0])
            best = sum(min(x["fp32_us"], x["int8_us"]) for x in r["layers"]) + min(r["fp32_other_us"],
                                                                                   r["int8_other_us"])
            slower = [str(k) for k, x in enumerate(r["layers"]) if x["int8_us"] > x["fp32_us"]]
            r["bounds"] = {"no_1x1": f_tot / max(i_tot - pw, 1e-9),
                           "first_fp32": f_tot / max(i_tot - first_i + first_f, 1e-9),
                           "best_per_layer": f_tot / max(best, 1e-9), "int8_slower_layers": [int(k) for k in slower]}
            lines += ["", f"Bounds (Amdahl, from this table): with every 1x1 convolution taking no time at all in "
                      f"int8, the rest as measured, int8 would be at most {r['bounds']['no_1x1']:.2f}x faster "
                      f"than fp32; with the first convolution at its fp32 time instead of its int8 time (mixed "
                      f"precision, not counting the extra quantize/dequantize), "
                      f"{r['bounds']['first_fp32']:.2f}x. **Any choice of which convolutions run in int8** (each "
                      f"at the faster of its two times, the rest at the faster of the two graphs' rest, no "
                      f"quantize/dequantize added between them): at most {r['bounds']['best_per_layer']:.2f}x (round "
                      f"by round: {spread([x['best_per_layer'] for x in rnd])}). "
                      f"int8 is slower than fp32 on convolution{'s' if len(slower) != 1 else ''} "
                      f"{', '.join(slower) or 'none'}."]
            lines.append("")
    j, md = write_results(Path(args.out), doc, "\n".join(lines) + "\n")
    log(f"wrote {j} and {md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
