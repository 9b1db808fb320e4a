"""Gradual channel pruning during training (TF Model Optimization-style schedules, per channel).

Every `--frequency` steps between the begin and end step the schedule sets a target sparsity K; in every
selected layer group the K·N lowest-ranked channels get mask 0, the rest keep 1 (pruned stays pruned).
Training settings not given here (optimizer, weight decay, label smoothing, ...) come from `--config`
(its `train` section) or the defaults, exactly as the prune stage of `prunekit run` uses them.
Writes OUT/model (masked model + masks), OUT/metrics.jsonl (accuracy per epoch, sparsity per pruning step),
OUT/summary.md|json (kept/total channels, params, MACs per layer) and plots: importance_hist.png,
weight_hist.png, kept_channels.png, sparsity.png. Then run `prunekit surgery --model OUT/model --out DIR`.

With --budget (macs=0.25x, params=1.2M, latency_ms=0.5x) a search chooses each layer's sparsity first (see
`prunekit plan --budget`), every layer ramps to its own target with the schedule, and the pruned model is
checked against the budget as measured at the end (OUT/budget.json: predicted, measured, met).

example:
  prunekit prune --model runs/mnv1/model --data bundled --final-sparsity 0.75 --epochs 4 --out runs/pruned
  prunekit prune --model runs/mnv1/model --budget macs=0.25x --epochs 4 --out runs/quarter
  prunekit prune --model runs/mnv1/model --budget latency_ms=0.5x --budget-batch 32 --out runs/fast
  prunekit prune --model runs/mnv1/model --schedule one_shot --final-sparsity 0.5 --criterion taylor \\
      --epochs 3 --out runs/oneshot
"""

from __future__ import annotations

import argparse

from .common import (
    add_budget_args,
    add_config_args,
    add_data_args,
    add_device_arg,
    config_flag,
    fresh_output,
    run_config,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="trained model directory (e.g. RUN/model)")
    add_data_args(p)
    add_config_args(p)
    g = p.add_argument_group("schedule")
    config_flag(g, "--schedule", "prune.schedule.kind", help="schedule kind (default polynomial_decay)")
    config_flag(g, "--initial-sparsity", "prune.schedule.initial_sparsity")
    config_flag(g, "--final-sparsity", "prune.final_sparsity",
                help="fraction of channels (or MACs/params, see --target) to remove (default 0.5)")
    config_flag(g, "--begin-step", "prune.schedule.begin_step")
    config_flag(g, "--end-step", "prune.schedule.end_step")
    config_flag(g, "--begin-epoch", "prune.schedule.begin_epoch", help="begin, in epochs (instead of --begin-step)")
    config_flag(g, "--end-epoch", "prune.schedule.end_epoch", help="end, in epochs (default: 60%% of --epochs)")
    config_flag(g, "--frequency", "prune.schedule.frequency", help="prune every N steps (default: ~10 updates)")
    config_flag(g, "--power", "prune.schedule.power", help="polynomial exponent (default 3)")
    c = p.add_argument_group("what to prune")
    config_flag(c, "--criterion", "prune.criterion", help="channel importance (default l1)")
    config_flag(c, "--scope", "prune.scope", help="local (default) or global")
    config_flag(c, "--layers", "prune.layers", help="pointwise (default), all, or a regex over layer names")
    config_flag(c, "--exclude", "prune.exclude")
    config_flag(c, "--round-to", "prune.round_to", help="keep multiples of N channels")
    config_flag(c, "--min-channels", "prune.min_channels")
    config_flag(c, "--target", "prune.target", help="what --final-sparsity measures (default channels)")
    add_budget_args(c)
    t = p.add_argument_group("training while pruning")
    config_flag(t, "--epochs", "prune.epochs", help="epochs (default 5)")
    config_flag(t, "--lr", "prune.lr", help="peak learning rate (default: train.lr / 2 = 0.025)")
    config_flag(t, "--batch-size", "prune.batch_size", help="batch size (default: train.batch_size = 128)")
    config_flag(t, "--seed", "seed")
    config_flag(t, "--distill", "prune.distill", help="weight of distillation from the dense --model (0 = off; "
                "0.5-0.9 typical)")
    p.add_argument("--out", required=True, help="output run directory")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--overwrite", action="store_true")
    add_device_arg(p)


def run(args: argparse.Namespace) -> int:
    from ..errors import PrunekitError
    from ..steps import prune
    from ..train import init_distributed
    from .common import flag_value

    for a, b in (("begin_step", "begin_epoch"), ("end_step", "end_epoch")):
        if flag_value(args, f"prune.schedule.{a}") is not None and flag_value(args, f"prune.schedule.{b}") is not None:
            raise PrunekitError(f"give --{a.replace('_', '-')} or --{b.replace('_', '-')}, not both")
    end_epoch, epochs = flag_value(args, "prune.schedule.end_epoch"), flag_value(args, "prune.epochs")
    if end_epoch is not None and end_epoch > (epochs if epochs is not None else 5):
        raise PrunekitError(f"--end-epoch {end_epoch} is after the last epoch ({epochs if epochs is not None else 5})")
    cfg = run_config(args, {"out": args.out})
    out = fresh_output(args.out, resume=args.resume, overwrite=args.overwrite)
    ctx = init_distributed(cfg.device)
    res = prune(cfg, args.model, out, resume=args.resume, ctx=ctx)
    if ctx.is_main:
        tot, t = res.totals, res.test
        print(f"pruned {100 * res.sparsity:.1f}% of the selected channels; masked model test top-1 "
              f"{t['top1']:.2f}%  top-5 {t['top5']:.2f}%")
        print(f"after surgery: params {tot['params_before']:,} -> {tot['params_after']:,}  MACs {tot['macs_before']:,}"
              f" -> {tot['macs_after']:,}")
        if res.budget:
            b = res.budget
            print(f"budget {b['budget']}: target {b['target']:.4g}, predicted {b['predicted']:.4g}, measured "
                  f"{b['measured']:.4g} after surgery: {'met' if b['met'] else 'NOT met'}")
        print(f"masked model -> {res.model_dir}; summary, plots -> {out}; next: prunekit surgery --model "
              f"{res.model_dir} --out <dir>")
    return 0
