"""Run the whole pruning guide from one YAML config: train -> prune -> surgery -> finetune -> export ->
quantize -> evaluate -> predict -> report. Every stage writes into OUT/stages/<stage>/ and is skipped on a
re-run when its inputs and settings are unchanged; a killed run resumes where it stopped. Ends with a summary
table and OUT/report.html, OUT/report.md, OUT/report.json.

Under torchrun (`torchrun --nproc_per_node N -m prunekit run CONFIG.yaml`) training stages run data-parallel
and the rest on rank 0.

example:
  prunekit run configs/demo.yaml
  prunekit run configs/demo.yaml --set prune.final_sparsity=0.5      # reruns from prune on
  prunekit run configs/fashion_mnist.yaml --set data.root=~/fmnist --out runs/fmnist
  prunekit run configs/demo.yaml --from finetune                      # force stages from finetune on
  prunekit run configs/demo.yaml --to prune                           # stop after prune (a later run goes on)
"""

from __future__ import annotations

import argparse

from ..pipeline import STAGES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML run config (see docs/config.md); every key has a default")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set prune.final_sparsity=0.5 (repeatable)")
    p.add_argument("--from", dest="start", choices=STAGES, help="rerun this stage and all later ones")
    p.add_argument("--to", dest="stop", choices=STAGES,
                   help="stop after this stage; a later run without --to skips what is done and goes on")
    p.add_argument("--out", help="run directory (default: the config's `out`)")


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..pipeline import Pipeline
    from ..report.html import collect, deploy_line, summary_rows, text_table

    sets = list(args.set) + ([f"out={args.out}"] if args.out else [])
    cfg = load_config(args.config, sets)
    pipe = Pipeline(cfg)
    pipe.run(args.start, args.stop)
    if args.stop and args.stop != STAGES[-1]:
        if pipe.ctx.is_main:
            done = STAGES[: STAGES.index(args.stop) + 1]
            print(f"stopped after {args.stop} ({pipe.results['_seconds']:.0f} s); done: {', '.join(done)} in "
                  f"{pipe.out / 'stages'}; not run: {', '.join(STAGES[len(done):])}")
        return 0
    if pipe.ctx.is_main:
        doc = collect(pipe)
        print()
        print(text_table(summary_rows(doc)))
        print("latency: batch 1 on this machine, one column per runtime; (N.NNx) = speed-up vs dense in that column")
        dep = deploy_line(doc)
        if dep:
            print(dep)
        s = doc["surgery"]
        if s.get("max_abs_diff") is not None:
            print(f"surgery verified (max abs diff {s['max_abs_diff']:.1e}); params {s['params_before']:,} -> "
                  f"{s['params_after']:,}")
        if doc["predict"].get("top5"):
            top = ", ".join(f"{t['label']} {100 * t['prob']:.0f}%" for t in doc["predict"]["top5"][:3])
            print(f"sample prediction ({doc['predict'].get('label') or 'image'}): {top}")
        print(f"total {pipe.results['_seconds']:.0f} s; report: {pipe.out / 'report.html'}")
    return 0
