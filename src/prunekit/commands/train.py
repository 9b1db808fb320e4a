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

from .common import add_config_args, add_data_args, add_device_arg, config_flag, fresh_output, run_config


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_data_args(p)
    add_config_args(p)
    p.add_argument("--init", metavar="DIR", help="start from this saved model (fine-tune) instead of a fresh one")
    config_flag(p, "--reinit", "model.reinit")
    config_flag(p, "--arch", "model.arch", help="model: mobilenet_v1 (default), torchvision:NAME or timm:NAME")
    config_flag(p, "--width", "model.width", help="width multiplier (mobilenet_v1; default 1.0)")
    config_flag(p, "--epochs", "train.epochs", help="epochs (default 10)")
    config_flag(p, "--batch-size", "train.batch_size", help="batch size (default 128)")
    config_flag(p, "--lr", "train.lr", help="peak learning rate (default 0.05)")
    config_flag(p, "--optimizer", "train.optimizer", help="sgd with Nesterov momentum (default) or adamw")
    config_flag(p, "--image-size", "data.image_size", help="input size (default: the data's)")
    config_flag(p, "--seed", "seed", help="random seed (default 0)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in OUT")
    add_device_arg(p)


def run(args: argparse.Namespace) -> int:
    from ..errors import PrunekitError
    from ..steps import train, write_resolved_config
    from ..train import CHECKPOINT, init_distributed
    from .common import flag_value

    if args.init and (flag_value(args, "model.arch") or flag_value(args, "model.width")):
        raise PrunekitError("--init takes the architecture from the saved model; drop --arch/--width")
    cfg = run_config(args, {"out": args.out})
    out = fresh_output(cfg.out, resume=args.resume, overwrite=args.overwrite)
    ctx = init_distributed(cfg.device)
    # Resuming: config.yaml is rewritten only once training has accepted the checkpoint, so a refused resume
    # (different config, unreadable checkpoint) leaves the run directory as it was.
    resuming = args.resume and (Path(out) / CHECKPOINT).exists()
    if ctx.is_main and not resuming:
        write_resolved_config(out, cfg)
    res = train(cfg, out, init=args.init or None, resume=args.resume, ctx=ctx)
    if ctx.is_main:
        if resuming:
            write_resolved_config(out, cfg)
        t = res.test
        print(f"test top-1 {t['top1']:.2f}%  top-5 {t['top5']:.2f}%  (n={t['n']})  model -> {res.model_dir}")
    return 0
