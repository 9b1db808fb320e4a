"""Gradual channel pruning during training (TF Model Optimization-style schedules, per channel).

Every `--frequency` steps between the begin and end step the schedule sets a target sparsity K; in every
selected layer group the K·N lowest-ranked channels get mask 0, the rest keep 1 (pruned stays pruned).
Writes OUT/model (masked model + masks), OUT/metrics.jsonl (accuracy per epoch, sparsity per pruning step),
OUT/summary.md|json (kept/total channels, params, MACs per layer) and plots: importance_hist.png,
weight_hist.png, kept_channels.png, sparsity.png. Then run `prunekit surgery --model OUT/model --out DIR`.

example:
  prunekit prune --model runs/mnv1/model --data bundled --final-sparsity 0.75 --epochs 4 --out runs/pruned
  prunekit prune --model runs/mnv1/model --schedule one_shot --final-sparsity 0.5 --criterion taylor \\
      --epochs 3 --out runs/oneshot
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_data_args, add_device_arg, fraction, fresh_output, positive_float, positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="trained model directory (e.g. RUN/model)")
    add_data_args(p)
    g = p.add_argument_group("schedule")
    g.add_argument("--schedule", default="polynomial_decay",
                   choices=["polynomial_decay", "constant", "one_shot", "agp", "linear"])
    g.add_argument("--initial-sparsity", type=fraction("--initial-sparsity"), default=0.0)
    g.add_argument("--final-sparsity", type=fraction("--final-sparsity"), default=0.5,
                   help="fraction of channels (or MACs/params, see --target) to remove (default 0.5)")
    g.add_argument("--begin-step", type=positive_int("--begin-step", allow_zero=True))
    g.add_argument("--end-step", type=int)
    g.add_argument("--begin-epoch", type=float, help="begin, in epochs (instead of --begin-step)")
    g.add_argument("--end-epoch", type=float, help="end, in epochs (default: 60%% of --epochs)")
    g.add_argument("--frequency", type=positive_int("--frequency"), help="prune every N steps (default: ~10 updates)")
    g.add_argument("--power", type=positive_float("--power"), default=3.0, help="polynomial exponent (default 3)")
    c = p.add_argument_group("what to prune")
    c.add_argument("--criterion", default="l1", choices=["l1", "l2", "l1_filters", "bn_gamma", "taylor", "random"])
    c.add_argument("--scope", default="local", choices=["local", "global"])
    c.add_argument("--layers", default="pointwise", help="pointwise (default), all, or a regex over layer names")
    c.add_argument("--exclude", help="regex of layers never to prune")
    c.add_argument("--round-to", type=positive_int("--round-to"), default=1, help="keep multiples of N channels")
    c.add_argument("--min-channels", type=positive_int("--min-channels"), default=1)
    c.add_argument("--target", default="channels", choices=["channels", "macs", "params"])
    t = p.add_argument_group("training while pruning")
    t.add_argument("--epochs", type=positive_float("--epochs"), default=5.0)
    t.add_argument("--lr", type=positive_float("--lr"), default=0.025,
                   help="peak learning rate (default 0.025: half of train's default, as prune.lr in configs)")
    t.add_argument("--batch-size", type=positive_int("--batch-size"), default=128)
    t.add_argument("--seed", type=positive_int("--seed", allow_zero=True), default=0)
    t.add_argument("--distill", type=fraction("--distill"), default=0.0,
                   help="weight of distillation from the dense --model (0 = off; 0.5-0.9 typical)")
    p.add_argument("--out", required=True, help="output run directory")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--overwrite", action="store_true")
    add_device_arg(p)


def run(args: argparse.Namespace) -> int:
    from ..api import resolve, save
    from ..config import PruneCfg, ScheduleCfg, TrainCfg
    from ..errors import PrunekitError
    from ..io import write_json
    from ..report.inspect import pruned_weight_magnitudes, write_inspection
    from ..train import fit, init_distributed, read_metrics
    from ..train.trainer import CHECKPOINT
    from ..workflows import pruning_config, set_seed, steps_per_epoch, train_config
    from .common import model_data

    if args.begin_step is not None and args.begin_epoch is not None:
        raise PrunekitError("give --begin-step or --begin-epoch, not both")
    if args.end_step is not None and args.end_epoch is not None:
        raise PrunekitError("give --end-step or --end-epoch, not both")
    if args.end_epoch is not None and args.end_epoch > args.epochs:
        raise PrunekitError(f"--end-epoch {args.end_epoch} is after the last epoch ({args.epochs})")
    out = fresh_output(args.out, resume=args.resume, overwrite=args.overwrite)
    ctx = init_distributed(args.device)
    set_seed(args.seed)
    loaded = resolve(args.model, "cpu")
    if loaded.pruner is not None:
        raise PrunekitError(f"{args.model} already carries pruning masks; run `prunekit surgery` on it, or prune "
                            "the dense model")
    data = model_data(loaded, args.data, args.data_dir, seed=args.seed)
    sched = ScheduleCfg(kind=args.schedule, initial_sparsity=args.initial_sparsity,
                        final_sparsity=args.final_sparsity, begin_step=args.begin_step, end_step=args.end_step,
                        begin_epoch=args.begin_epoch or 0.0, end_epoch=args.end_epoch, frequency=args.frequency,
                        power=args.power)
    pcfg = PruneCfg(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, schedule=sched, distill=args.distill,
                    criterion=args.criterion, scope=args.scope, layers=args.layers, exclude=args.exclude,
                    round_to=args.round_to, min_channels=args.min_channels, target=args.target)
    spe = steps_per_epoch(data, args.batch_size)
    config = pruning_config(pcfg, spe, args.seed)
    tcfg = train_config(TrainCfg(batch_size=args.batch_size), args.seed, pcfg)
    from ..pruning import prune_

    model = loaded.model
    teacher = None
    if args.distill > 0:
        import copy

        teacher = copy.deepcopy(model).eval()
    pruner = prune_(model, config, loaded.input_shape, steps_per_epoch=spe)
    scores_before = pruner.criterion.scores(model, pruner.graph, pruner.groups)
    weights_before = pruned_weight_magnitudes(pruner, only_alive=False)
    if config.criterion == "taylor" and pruner.schedule.begin_step == 0 and not args.resume:
        from ..data import iterate_batches

        batches = iterate_batches(data, "train", args.batch_size, train=True, seed=args.seed + 1)
        pruner.calibrate(b for _, b in zip(range(config.taylor_batches), batches, strict=False))
    prune_doc = {"pruning": config.to_dict(), "train": tcfg.__dict__, "source_model": str(args.model),
                 "steps_per_epoch": spe}
    resuming = args.resume and (out / CHECKPOINT).exists()  # a refused resume leaves prune_config.json alone
    if ctx.is_main and not resuming:
        write_json(out / "prune_config.json", prune_doc)
    result = fit(model, data, tcfg, out, callbacks=[pruner], resume=args.resume, ctx=ctx, desc="prune",
                 teacher=teacher)
    if ctx.is_main:
        if resuming:
            write_json(out / "prune_config.json", prune_doc)
        model.cpu()
        spec = loaded.spec
        spec.extra = {**spec.extra, "metrics": {"test": result["test"], "sparsity": pruner.sparsity()}}
        save(model, Path(out) / "model", spec)
        info = write_inspection(pruner, out, scores_before, weights_before, read_metrics(out / "metrics.jsonl"))
        tot = info["totals"]
        t = result["test"]
        print(f"pruned {100 * pruner.sparsity():.1f}% of the selected channels; masked model test top-1 "
              f"{t['top1']:.2f}%  top-5 {t['top5']:.2f}%")
        print(f"after surgery: params {tot['params_before']:,} -> {tot['params_after']:,}  MACs {tot['macs_before']:,}"
              f" -> {tot['macs_after']:,}")
        print(f"masked model -> {Path(out) / 'model'}; summary, plots -> {out}; next: prunekit surgery --model "
              f"{Path(out) / 'model'} --out <dir>")
    return 0
