"""Network surgery: physically delete pruned channels and everything coupled to them, then verify that the
smaller model's outputs equal the masked model's (max abs diff <= 1e-4, fp32, eval mode).

Channels to delete come from (in this order): --sparsity (chosen one-shot by --criterion, so any model can be
shrunk in one line), the masks saved by `prunekit prune`, or the seed's rule "output channels whose weights
are all zero". Exits 0 only if verification passed.

example:
  prunekit surgery --model runs/pruned/model --out runs/shrunk
  prunekit surgery --model torchvision:resnet50 --sparsity 0.5 --layers all --out runs/r50_half --json
"""

from __future__ import annotations

import argparse
import time

from .common import add_json_arg, fraction, fresh_output, positive_int, print_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory (masked or dense) or torchvision:NAME")
    p.add_argument("--out", required=True, help="directory for the shrunk model")
    p.add_argument("--sparsity", type=fraction("--sparsity"), help="one-shot: remove this fraction of channels")
    p.add_argument("--criterion", default="l1", choices=["l1", "l2", "l1_filters", "bn_gamma", "random"])
    p.add_argument("--layers", default="pointwise", help="pointwise (default), all, or a regex over layer names")
    p.add_argument("--exclude", help="regex of layers never to prune")
    p.add_argument("--scope", default="local", choices=["local", "global"])
    p.add_argument("--round-to", type=positive_int("--round-to"), default=1)
    p.add_argument("--seed", type=positive_int("--seed", allow_zero=True), default=0)
    p.add_argument("--verify", dest="verify", action="store_true", default=True, help="verify (default)")
    p.add_argument("--no-verify", dest="verify", action="store_false", help="skip the exactness check")
    p.add_argument("--image-size", type=positive_int("--image-size"), help="input size (default: the model's)")
    p.add_argument("--overwrite", action="store_true")
    add_json_arg(p)


def run(args: argparse.Namespace) -> int:
    from ..api import resolve, save
    from ..errors import PrunekitError
    from ..pruning import PruningConfig, prune_
    from ..pruning.pruner import strip_copy
    from ..surgery import shrink

    t0 = time.perf_counter()
    out = fresh_output(args.out, overwrite=args.overwrite, marker="model.json")
    loaded = resolve(args.model)
    shape = loaded.input_shape if not args.image_size else (loaded.spec.input.channels, args.image_size,
                                                            args.image_size)
    model = loaded.model.eval()
    if args.sparsity is not None:
        if loaded.pruner is not None:
            model = strip_copy(model)
        if args.sparsity == 0:
            raise PrunekitError("--sparsity 0 removes nothing")
        cfg = PruningConfig(schedule={"kind": "one_shot", "target_sparsity": args.sparsity},
                            criterion=args.criterion, scope=args.scope, layers=args.layers, exclude=args.exclude,
                            round_to=args.round_to, seed=args.seed)
        pruner = prune_(model, cfg, shape)
        pruner.step(0)
        res = pruner.shrink(check=args.verify)
        source = f"one-shot {args.criterion} {args.sparsity}"
    elif loaded.pruner is not None:
        res = loaded.pruner.shrink(check=args.verify)
        source = "saved masks"
    else:
        res = shrink(model, shape, "zero", check=args.verify)
        source = "zero-weight channels"
        if res.channels_removed == 0:
            raise PrunekitError(f"{args.model} has no masks and no all-zero channels; pass --sparsity S to choose "
                                "channels one-shot, or run `prunekit prune` first")
    spec = loaded.spec
    hist = list(spec.extra.get("history", []))
    hist.append({"step": "surgery", "source": source, **res.to_dict()})
    spec.extra = {k: v for k, v in spec.extra.items() if k not in ("pruning", "metrics")}
    spec.extra["history"] = hist
    save(res.model.cpu(), out, spec)
    info = {**res.to_dict(), "seconds": time.perf_counter() - t0, "source": source, "out": str(out)}
    if args.json:
        print_json(info)
    else:
        diff = "skipped" if res.max_abs_diff is None else f"{res.max_abs_diff:.2e}"
        print(f"removed {res.channels_removed} channels in {res.groups} groups ({source}); verification max abs "
              f"diff {diff}")
        print(f"params {res.params_before:,} -> {res.params_after:,} ({100 * (1 - res.params_after / res.params_before):.1f}% "
              f"fewer)  MACs {res.macs_before:,} -> {res.macs_after:,}  -> {out}")
    return 0
