"""Which score ranks allocations as fine-tuning does? Adaptive BN vs a short masked fine-tuning.

``allocation_spread.py`` trained 8 candidates of one plan per budget (2 seeds each) and found the search's
adaptive-BN score weakly related to the final top-1 at MACs 1/4 (Spearman +0.48) and unrelated at latency 1/4
(-0.05: every candidate scores near chance after pruning three quarters of the network). This script re-scores
exactly those allocations (their ``kept`` lists, from the spread studies' result files) with the library's
fine-tuning scorer (``prunekit.steps._finetune_scorer``: ``prune.search_finetune_steps`` SGD steps of the masked
dense model, then adaptive BN and the held-out score, the search's own settings) at each ``--steps`` and reports
each score's rank correlation with the studies' final top-1 (mean of 2 seeds). Nothing is trained to the end
here: the final accuracies are the spread studies'.

    python benchmarks/allocation_spread.py --quick --split 1,1,3 --finetune-lr 0.1 [--budget latency_ms=0.25x]
    python benchmarks/search_proxy.py          # ~10 min on 2 cores: both studies, 300 steps
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import allocation_spread as S  # noqa: E402
import budget_fmnist as B  # noqa: E402

STUDIES = [C.RESULTS / f"allocation_spread_quick_{b}_0.25x_split1-1-3.json" for b in ("macs", "latency_ms")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", nargs="+", default=[str(p) for p in STUDIES])
    ap.add_argument("--steps", default="300", help="fine-tuning steps to try, comma-separated (default %(default)s)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=str(C.RESULTS / "search_finetune_proxy"))
    args = ap.parse_args(argv)
    C.setup_threads(args.threads or None)
    import torch

    from prunekit import steps
    from prunekit.saved import load

    t_all = time.perf_counter()
    env = C.environment(torch.device("cpu"))
    step_list = [int(s) for s in args.steps.split(",")]
    out, lines = [], []
    with C.LoadSampler() as ls:
        for path in args.studies:
            study = json.loads(Path(path).read_text())
            c = study["config"]
            dense_dir = C.WORK / f"budget_fmnist_quick_split{c['dense_epochs']:g}-{c['prune_epochs']:g}-" \
                f"{c['finetune_epochs']:g}" / "dense"
            bundle = C.load_fmnist(None, c["train_subset"])
            loaded = load(dense_dir / "model")
            cfg = B.run_config(c, 0, study["budget"])
            _, evaluator, _, _ = steps._budget_setup(cfg, loaded, bundle, torch.device("cpu"))
            scorers = {n: steps._finetune_scorer(dataclasses.replace(cfg, prune=dataclasses.replace(
                cfg.prune, search_finetune_steps=n)), bundle, evaluator, torch.device("cpu")) for n in step_list}
            rows = []
            for r in study["rows"]:
                row = {"candidate": r["candidate"], "method": r["method"], "final": r["mean"],
                       "abn_top1": r["abn_top1"], "kept": r["kept"]}
                for n in step_list:  # each scorer restores the model it trains: one setup serves every candidate
                    t0 = time.perf_counter()
                    score = scorers[n](r["kept"])
                    row[f"ft{n}_top1"], row[f"ft{n}_loss"] = score["top1"], score["loss"]
                    C.log(f"{study['budget']} candidate {r['candidate']} ({r['method']}): {n} steps -> top-1 "
                          f"{score['top1']:.2f}% ({time.perf_counter() - t0:.0f} s); final {r['mean']:.2f}")
                rows.append(row)
            final = [r["final"] for r in rows]
            corr = {"adaptive_bn": S.spearman([r["abn_top1"] for r in rows], final)}
            for n in step_list:
                corr[f"finetune_{n}"] = S.spearman([r[f"ft{n}_top1"] for r in rows], final)
            best_final = max(final)
            picks = {k: rows[max(range(len(rows)), key=lambda i, k=k: (rows[i][k], -i))]
                     for k in ["abn_top1"] + [f"ft{n}_top1" for n in step_list]}
            out.append({"study": Path(path).name, "study_commit": study["provenance"]["git_commit"],
                        "budget": study["budget"], "rows": rows, "spearman": corr,
                        "picks": {k: {"candidate": v["candidate"], "final": v["final"]} for k, v in picks.items()},
                        "best_final": best_final})
            lines += [f"## {study['budget']} ({Path(path).name}, trained at {study['provenance']['git_commit'][:10]})",
                      "", "| candidate | method | adaptive-BN top-1 | " +
                      " | ".join(f"after {n} steps" for n in step_list) + " | final top-1 (mean of 2 seeds) |",
                      "|---:|---|---:|" + "---:|" * len(step_list) + "---:|"]
            for r in rows:
                lines.append(f"| {r['candidate']} | {r['method']} | {r['abn_top1']:.1f}% | " +
                             " | ".join(f"{r[f'ft{n}_top1']:.1f}%" for n in step_list) + f" | {r['final']:.2f} |")
            lines += ["", "Rank correlation (Spearman) with the final top-1: " + ", ".join(
                f"{k.replace('_', ' ')} {v:+.2f}" for k, v in corr.items()) + ". Each score's pick among these "
                f"{len(rows)}: " + ", ".join(f"{k.replace('_top1', '')} -> candidate {v['candidate']} "
                                              f"({v['final']:.2f})" for k, v in picks.items()) +
                f"; the best of them finished at {best_final:.2f}.", ""]
    doc = {"command": C.command_line(), "environment": env, "provenance": env.get("provenance"), "steps": step_list,
           "studies": out, "load": ls.summary(), "seconds_total": round(time.perf_counter() - t_all, 1)}
    head = ["# The search's score: adaptive BN vs a short fine-tuning", "", C.provenance_line(doc["provenance"]), "",
            "Allocations and their final top-1 from the allocation-spread studies (each trained 1+1+3 epochs, 2 "
            "seeds); re-scored here on the same held-out training slice with the library's fine-tuning scorer "
            "(SGD, batch 128, 0.1 x the fine-tuning LR, the training split minus the held-out slice, then adaptive "
            f"BN). Load average {doc['load']}; {doc['seconds_total'] / 60:.0f} min.", ""]
    j, m = C.write_results(Path(args.out), doc, "\n".join(head + lines))
    C.log(f"wrote {j} and {m}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
