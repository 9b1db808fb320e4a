"""Train a model and save it to OUT/model (model.json + model.safetensors).

Also writes OUT/metrics.jsonl (one line per epoch), OUT/config.yaml (the resolved configuration) and
OUT/checkpoint.pt (every epoch, atomically). `--resume` continues a killed run and ends with exactly the
weights an uninterrupted run would have.

With `--init DIR` it starts from a saved model instead (fine-tuning, e.g. the shrunk model after surgery: the
seed's "retrain" step); the architecture and input settings then come from DIR.

example:
  prunekit train --data bundled --width 0.5 --epochs 5 --out runs/mnv1
  prunekit train --data fashion-mnist --data-dir ~/fmnist --epochs 30 --batch-size 256 --lr 0.1 --out runs/full
  prunekit train --init runs/shrunk --data bundled --epochs 4 --lr 0.02 --out runs/finetuned
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_data_args, add_device_arg, fresh_output, positive_float, positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_data_args(p)
    p.add_argument("--config", metavar="YAML", help="take model/data/train settings from a run config")
    p.add_argument("--init", metavar="DIR", help="start from this saved model (fine-tune) instead of a fresh one")
    p.add_argument("--arch", help="model: mobilenet_v1 (default) or torchvision:NAME")
    p.add_argument("--width", type=positive_float("--width"), help="width multiplier (mobilenet_v1; default 1.0)")
    p.add_argument("--epochs", type=positive_float("--epochs"), help="epochs (default 10)")
    p.add_argument("--batch-size", type=positive_int("--batch-size"), help="batch size (default 128)")
    p.add_argument("--lr", type=positive_float("--lr"), help="peak learning rate (default 0.05)")
    p.add_argument("--optimizer", choices=["sgd", "adamw"], help="sgd with Nesterov momentum (default) or adamw")
    p.add_argument("--image-size", type=positive_int("--image-size"), help="input size (default: the data's)")
    p.add_argument("--seed", type=positive_int("--seed", allow_zero=True), help="random seed (default 0)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config key, e.g. train.lr=0.1")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in OUT")
    add_device_arg(p)


def run(args: argparse.Namespace) -> int:
    from ..api import save
    from ..config import apply_overrides, parse_config, read_yaml
    from ..train import fit, init_distributed
    from ..train.trainer import CHECKPOINT
    from ..workflows import build_model, make_data, set_seed, train_config, write_resolved_config

    raw = read_yaml(args.config) if args.config else {}
    sets = list(args.set)
    flag_keys = {"data": "data.name", "data_dir": "data.root", "arch": "model.arch", "width": "model.width",
                 "epochs": "train.epochs", "batch_size": "train.batch_size", "lr": "train.lr",
                 "optimizer": "train.optimizer", "image_size": "data.image_size", "seed": "seed",
                 "device": "device", "out": "out"}
    for attr, key in flag_keys.items():
        v = getattr(args, attr, None)
        if v is not None and not (attr == "data" and args.config and v == "bundled" and "data" in raw):
            sets.append(f"{key}={v}")
    cfg = parse_config(apply_overrides(raw, sets))
    out = fresh_output(cfg.out, resume=args.resume, overwrite=args.overwrite)
    ctx = init_distributed(cfg.device)
    set_seed(cfg.seed)
    if args.init:
        from ..api import load
        from ..errors import PrunekitError
        from .common import model_data

        if args.arch or args.width:
            raise PrunekitError("--init takes the architecture from the saved model; drop --arch/--width")
        loaded = load(args.init)
        if loaded.pruner is not None:
            raise PrunekitError(f"{args.init} carries pruning masks; fine-tune it with `prunekit prune` or run "
                                "`prunekit surgery` first")
        model, spec = loaded.model, loaded.spec
        data = model_data(loaded, cfg.data.name, cfg.data.root, cfg.seed)
        spec.extra = {k: v for k, v in spec.extra.items() if k != "metrics"}
    else:
        data = make_data(cfg.data, seed=cfg.seed)
        model, spec = build_model(cfg.model, data, cfg.data.resize)
    tcfg = train_config(cfg.train, cfg.seed, num_workers=cfg.data.num_workers)
    # Resuming: config.yaml is rewritten only once fit() has accepted the checkpoint, so a refused resume
    # (different config, unreadable checkpoint) leaves the run directory as it was.
    resuming = args.resume and (Path(out) / CHECKPOINT).exists()
    if ctx.is_main and not resuming:
        write_resolved_config(out, cfg)
    result = fit(model, data, tcfg, out, resume=args.resume, ctx=ctx, desc="train")
    if ctx.is_main:
        if resuming:
            write_resolved_config(out, cfg)
        spec.extra["metrics"] = {"test": result["test"], "steps": result["steps"]}
        save(model.cpu(), Path(out) / "model", spec)
        t = result["test"]
        print(f"test top-1 {t['top1']:.2f}%  top-5 {t['top5']:.2f}%  (n={t['n']})  model -> {Path(out) / 'model'}")
    return 0
