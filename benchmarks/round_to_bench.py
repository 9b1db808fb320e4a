"""Do channel counts rounded to multiples of 4/8/16 (``prune.round_to``) run faster? A latency benchmark.

MobileNet V1 1.0 (weights do not change latency: random init), one-shot pruned to ``--sparsity`` of its pointwise
channels (default 0.7: keeps 30%, i.e. counts like 19/38/77/154/307 that are *not* multiples of 8) with
``round_to`` 1, 4, 8 and 16, shrunk; then batch-1 and batch-N latency of each variant in PyTorch eager, ONNX
Runtime fp32 and ONNX Runtime int8 (QDQ, settings for this CPU), the variants of one runtime timed in
alternating rounds. Rounding also changes the MACs a little (counts go to the *nearest* multiple), so the
verdict uses the latency ratio divided by the MAC ratio (``per_mac``, vs round_to=1): below 1 means the rounded
counts run faster per MAC. A ratio within ``--noise`` of 1 is reported as within noise.

    python benchmarks/round_to_bench.py                       # 28x28x1 and 224x224x3
    python benchmarks/round_to_bench.py --sizes 224 --repeats 50 --threads 2

Writes ``benchmarks/results/round_to.{json,md}``; ``deploy_bench.py`` runs it too (one command for all).
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, LoadSampler, environment, log, provenance_line, write_results  # noqa: E402

ROUNDS = (1, 4, 8, 16)
RUNTIMES = ("pytorch", "onnxruntime-fp32", "onnxruntime-int8")


def _variants(size: int, channels: int, sparsity: float, work: Path) -> list[dict]:
    from prunekit.cost import profile
    from prunekit.deploy import DeployMeta, export_onnx, quantize_onnx
    from prunekit.models import InputSpec, ModelSpec, create_model
    from prunekit.pruning import OneShot, PruningConfig, prune_

    torch.manual_seed(0)
    kwargs = {"width": 1.0, "num_classes": 10, "in_channels": channels, "small_input": size < 64}
    base = create_model("mobilenet_v1", **kwargs).eval()
    spec = ModelSpec("mobilenet_v1", kwargs, InputSpec([size, size], channels, [0.5] * channels, [0.25] * channels),
                     [str(i) for i in range(10)])
    shape = (channels, size, size)
    rng = np.random.default_rng(0)
    calib = [rng.standard_normal((8, *shape)).astype(np.float32) for _ in range(4)]
    out = []
    for r in ROUNDS:
        model = copy.deepcopy(base)
        pruner = prune_(model, PruningConfig(schedule=OneShot(sparsity), criterion="l1", layers="pointwise",
                                             round_to=r), shape)
        pruner.step(0)
        shrunk = pruner.shrink(check=False).model.eval()
        prof = profile(shrunk, shape)
        counts = sorted({m.out_channels for m in shrunk.modules() if isinstance(m, torch.nn.Conv2d)
                         and m.kernel_size == (1, 1)})
        fp32, int8 = work / f"r{r}.onnx", work / f"r{r}.int8.onnx"
        export_onnx(shrunk, DeployMeta.from_spec(spec, "onnx"), fp32)
        quantize_onnx(fp32, int8, iter(calib), calib_source="synthetic")
        out.append({"round_to": r, "macs": prof.macs, "params": prof.params, "pointwise_channels": counts,
                    "model": shrunk, "files": {"onnxruntime-fp32": fp32, "onnxruntime-int8": int8}})
    return out


def measure(size: int, sparsity: float, batches: tuple[int, ...], threads: int, repeats: int,
            max_seconds: float = 30.0, stat: str = "p50_ms") -> dict:
    """Latency of every round_to variant at one input size (see the module docstring)."""
    from prunekit.inference.bench import compare_onnx, stats, time_interleaved

    channels = 1 if size < 64 else 3
    with tempfile.TemporaryDirectory(prefix="round_to_") as tmp:
        vs = _variants(size, channels, sparsity, Path(tmp))
        lat: dict[str, dict[int, dict[str, dict]]] = {rt: {v["round_to"]: {} for v in vs} for rt in RUNTIMES}
        rng = np.random.default_rng(0)
        for b in batches:
            x = torch.from_numpy(rng.standard_normal((b, channels, size, size)).astype(np.float32))

            def run(m, x=x):
                with torch.inference_mode():
                    m(x)

            times = time_interleaved({v["round_to"]: (lambda m=v["model"]: run(m)) for v in vs}, 3, repeats,
                                     max_seconds)
            for r, t in times.items():
                lat["pytorch"][r][str(b)] = stats(t, b)
        for rt in ("onnxruntime-fp32", "onnxruntime-int8"):
            res = compare_onnx({str(v["round_to"]): v["files"][rt] for v in vs}, batches, threads, repeats,
                               3, max_seconds)
            for r, per in res.items():
                lat[rt][int(r)] = per
    base = vs[0]
    rows = []
    for v in vs:
        r = v["round_to"]
        row = {"round_to": r, "macs": v["macs"], "params": v["params"], "pointwise_channels": v["pointwise_channels"],
               "macs_ratio": v["macs"] / base["macs"], "latency": {}, "per_mac": {}}
        for rt in RUNTIMES:
            for b in map(str, batches):
                ms = lat[rt][r][b][stat]
                row["latency"][f"{rt}@{b}"] = ms
                row["per_mac"][f"{rt}@{b}"] = (ms / lat[rt][1][b][stat]) / row["macs_ratio"]
        rows.append(row)
    return {"size": size, "channels": channels, "sparsity": sparsity, "batches": list(batches), "stat": stat,
            "rows": rows,
            "raw": {rt: {str(r): per for r, per in d.items()} for rt, d in lat.items()}}


def verdict(study: dict, noise: float) -> dict:
    """Per runtime and batch: the best round_to by latency per MAC, and whether any differs beyond ``noise``."""
    out = {}
    for key in study["rows"][0]["per_mac"]:
        vals = {row["round_to"]: row["per_mac"][key] for row in study["rows"]}
        best = min(vals, key=vals.get)
        out[key] = {"best": best, "best_per_mac": vals[best], "beyond_noise": any(abs(v - 1) > noise
                                                                                  for v in vals.values())}
    return out


def _run_default() -> int:
    from prunekit.config import PruneCfg

    return PruneCfg().round_to


def recommend(studies: list[dict], noise: float) -> dict:
    """The default to pick from the measurements: 1 unless some round_to is consistently faster per MAC."""
    faster = {}
    for st in studies:
        for key, v in verdict(st, noise).items():
            if v["beyond_noise"] and v["best"] != 1 and v["best_per_mac"] < 1 - noise:
                faster[f"{st['size']}px {key}"] = v["best"]
    slower = [f"{st['size']}px {k}" for st in studies for k, v in verdict(st, noise).items()
              if v["beyond_noise"] and v["best"] == 1]
    if not faster:
        return {"default": 1, "faster": {}, "text": f"no round_to beats 1 by more than {100 * noise:.0f}% per MAC in "
                f"any runtime measured: rounding does not matter here (prunekit's runs round to {_run_default()} by "
                "default)"}
    common = sorted(set(faster.values()))
    return {"default": None, "faster": faster, "slower_where": slower,
            "text": f"round_to {common} is faster per MAC beyond {100 * noise:.0f}% in: {', '.join(faster)}"
                    + (f"; but not in: {', '.join(slower)}" if slower else "")
                    + f" (prunekit's runs round to {_run_default()} by default; PruningConfig, the library object, "
                      "keeps exact counts unless told)"}


def markdown(doc: dict) -> str:
    lines = ["# Channel rounding (`prune.round_to`) vs latency", "", provenance_line(doc["environment"]["provenance"]),
             f"Load average during the run: {doc['load']}. Threads: {doc['threads']}; {doc['repeats']} timed rounds "
             f"per variant (variants of one runtime interleaved); statistic: {doc['stat']}. Random weights (latency "
             "does not depend on them).",
             ""]
    for st in doc["studies"]:
        keys = list(st["rows"][0]["latency"])
        lines += [f"## {st['size']}x{st['size']}x{st['channels']}, pointwise sparsity {st['sparsity']}", "",
                  "| round_to | pointwise channels | MACs (x vs 1) | " + " | ".join(f"{k} ms (per MAC vs 1)"
                                                                        for k in keys) + " |",
                  "|---:|---|---:|" + "---:|" * len(keys)]
        for row in st["rows"]:
            cells = [f"{row['latency'][k]:.3f} ({row['per_mac'][k]:.2f})" for k in keys]
            lines.append(f"| {row['round_to']} | {', '.join(map(str, row['pointwise_channels']))} | "
                         f"{row['macs'] / 1e6:.1f} M ({row['macs_ratio']:.3f}) | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Verdict", "", doc["recommendation"]["text"] + ".", ""]
    return "\n".join(lines)


def run(sizes: tuple[int, ...], threads: int, repeats: int, sparsity: float = 0.7, noise: float = 0.05,
        batch: int = 32, stat: str = "p50_ms") -> dict:
    torch.set_num_threads(threads)
    studies = []
    with LoadSampler(15) as load:
        for size in sizes:
            b = (1, batch if size < 64 else max(1, batch // 4))
            log(f"round_to study at {size}x{size}: batches {b}")
            studies.append(measure(size, sparsity, b, threads, repeats, stat=stat))
    return {"studies": studies, "recommendation": recommend(studies, noise), "noise": noise, "threads": threads,
            "repeats": repeats, "stat": stat, "load": load.summary()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="28,224", help="input sizes (28: 1 channel, others: 3 channels)")
    ap.add_argument("--threads", type=int, default=0, help="threads (default: all available cores)")
    ap.add_argument("--repeats", type=int, default=30, help="timed rounds per variant and batch size")
    ap.add_argument("--sparsity", type=float, default=0.7)
    ap.add_argument("--noise", type=float, default=0.05, help="per-MAC ratios within this of 1 are within noise")
    ap.add_argument("--stat", choices=("p50_ms", "min_ms"), default="p50_ms",
                    help="statistic compared (min_ms is steadier on a loaded machine)")
    ap.add_argument("--out", help="output prefix (default benchmarks/results/round_to)")
    args = ap.parse_args(argv)
    from prunekit.inference.bench import available_cores

    threads = args.threads or available_cores()
    t0 = time.perf_counter()
    doc = run(tuple(int(s) for s in args.sizes.split(",")), threads, args.repeats, args.sparsity, args.noise,
              stat=args.stat)
    doc["environment"] = environment(torch.device("cpu"))
    doc["seconds"] = time.perf_counter() - t0
    j, m = write_results(Path(args.out) if args.out else RESULTS / "round_to", doc, markdown(doc))
    print(markdown(doc))
    print(f"wrote {j} and {m}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
