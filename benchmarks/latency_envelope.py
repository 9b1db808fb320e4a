"""Does the latency tables' monotone envelope help? Re-analyses a ``latency_model.py`` results file on the machine
that produced it: the per-layer tables come from that run's cache (nothing is timed again; a cell missing from the
cache is an error), each model's calibration and measured latencies from the file, and the predictions are made
twice, from the cells as measured and through :func:`prunekit.inference.latency.monotone` (a layer with fewer
channels in both is not slower: timing noise only slows).

    python benchmarks/latency_envelope.py benchmarks/results/latency_model_xeon.json --out benchmarks/results/latency_monotone_xeon
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import latency_model as LM  # noqa: E402
from _common import environment, log, provenance_line, write_results  # noqa: E402


def reanalyse(res: dict, n_random: int) -> dict:
    from prunekit.inference import latency as L
    from prunekit.pruning.budget import ChannelFractions

    key, batch, grid, a = res["model"], res["batch"], res["grid"], res["align"]
    dense, pruner, shape = LM.model_and_groups(key)
    sizes = np.array([g.size for g in pruner.groups])
    configs = LM.allocations(sizes, a, n_random)  # the allocations latency_model.py drew
    # the file's calibration measurements (dense, then uniform at each anchor: the order LatencyCost times them in)
    # stand in for the timings, so LatencyCost calibrates itself exactly as in that run
    measured = [c["measured_ms"] for c in res["calibration"]]
    out = {}
    for name, envelope in (("as measured", False), ("envelope", True)):
        table = L.LatencyTable(L.Timer("onnxruntime-fp32", batch, res.get("threads", 2)))
        with mock.patch.object(L, "measure_models", lambda models, *x, **k: measured[:len(models)]):
            cost = L.LatencyCost(dense, shape, ChannelFractions(pruner.graph, pruner.groups), table, grid=grid,
                                 round_to=a, build=lambda keep: dense, envelope=envelope)
        if table.measured:
            raise SystemExit(f"{key} batch {batch}: {table.measured} table cells not in this machine's cache: run "
                             "this on the machine (and cache) that produced the results file")
        errors = {}
        for r in res["rows"]:
            p = cost(configs[r["config"]])
            if not envelope and abs(p - r["predicted_ms"]) > 1e-6 * max(1.0, p):
                raise SystemExit(f"{key} batch {batch} {r['config']}: the cached table does not reproduce the "
                                 f"file's prediction ({p:.4f} vs {r['predicted_ms']:.4f} ms)")
            errors[r["config"]] = (p - r["measured_ms"]) / r["measured_ms"]
        oos = [abs(e) for c, e in errors.items() if c not in res["in_sample"]]
        out[name] = {"errors": errors, "max_abs_out_of_sample": max(oos),
                     "rms_out_of_sample": float(np.sqrt(np.mean(np.square(oos))))}
    return {"model": key, "batch": batch, "grid": grid, **out}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path, help="a latency_model.py results file (.json) made on this machine")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    src = json.loads(args.results.read_text())
    n_random = 2 if src.get("quick") else 3
    rows = []
    for res in src["results"]:
        rows.append(reanalyse({**res, "threads": src.get("threads", 2)}, n_random))
        r = rows[-1]
        log(f"{r['model']} b{r['batch']}: out of sample max {100 * r['as measured']['max_abs_out_of_sample']:.1f}% "
            f"-> {100 * r['envelope']['max_abs_out_of_sample']:.1f}%")
    env = environment(torch.device("cpu"))
    doc = {"command": " ".join(sys.argv), "environment": env, "provenance": env.get("provenance"),
           "source": str(args.results), "source_provenance": src.get("provenance"), "rows": rows}
    sp = src.get("provenance") or {}
    lines = ["# Latency tables: as measured vs through a monotone envelope", "", provenance_line(doc["provenance"]),
             "", f"Re-analysis of [{args.results.stem}]({args.results.stem}.md) (commit "
             f"{(sp.get('git_commit') or '?')[:10]}, {sp.get('recorded', '?')}): the same cached layer tables, "
             "calibration and measured latencies; only the tables' envelope differs. Out-of-sample rows only "
             "(uniform 37.5/62.5 % and the random allocations).", "",
             "| model | batch | max abs error, as measured | with envelope | rms, as measured | with envelope |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        a, e = r["as measured"], r["envelope"]
        lines.append(f"| {r['model']} | {r['batch']} | {100 * a['max_abs_out_of_sample']:.1f}% | "
                     f"{100 * e['max_abs_out_of_sample']:.1f}% | {100 * a['rms_out_of_sample']:.1f}% | "
                     f"{100 * e['rms_out_of_sample']:.1f}% |")
    j, m = write_results(Path(args.out), doc, "\n".join(lines) + "\n")
    log(f"wrote {j} and {m}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
