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
    from ..pruning import CRITERIA, SCOPES

    p.add_argument("--model", required=True, help="model directory (masked or dense), torchvision:NAME or timm:NAME")
    p.add_argument("--out", required=True, help="directory for the shrunk model")
    p.add_argument("--sparsity", type=fraction("--sparsity"), help="one-shot: remove this fraction of channels")
    p.add_argument("--criterion", default="l1", choices=[n for n in CRITERIA if not CRITERIA[n].needs_data],
                   help="channel importance for --sparsity (default l1)")
    p.add_argument("--layers", default="pointwise", help="pointwise (default), all, or a regex over layer names")
    p.add_argument("--exclude", help="regex of layers never to prune")
    p.add_argument("--scope", default="local", choices=SCOPES)
    p.add_argument("--round-to", type=positive_int("--round-to"), default=8,
                   help="keep channel counts multiples of N (default 8: faster in ONNX Runtime; 1: exact counts)")
    p.add_argument("--seed", type=positive_int("--seed", allow_zero=True), default=0)
    p.add_argument("--verify", dest="verify", action="store_true", default=True, help="verify (default)")
    p.add_argument("--no-verify", dest="verify", action="store_false", help="skip the exactness check")
    p.add_argument("--image-size", type=positive_int("--image-size"), help="input size (default: the model's)")
    p.add_argument("--overwrite", action="store_true")
    add_json_arg(p)


def run(args: argparse.Namespace) -> int:
    from ..steps import Surgery, surgery

    t0 = time.perf_counter()
    out = fresh_output(args.out, overwrite=args.overwrite, marker="model.json")
    how = Surgery(args.sparsity, args.criterion, args.layers, args.exclude, args.scope, args.round_to, args.seed)
    res = surgery(args.model, out, how, verify=args.verify, image_size=args.image_size)
    r = res.result
    if args.json:
        print_json({**r, "seconds": time.perf_counter() - t0, "source": res.source, "out": str(out)})
        return 0
    diff = "skipped" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.2e}"
    print(f"removed {r['channels_removed']} channels in {r['groups']} groups ({res.source}); verification max abs "
          f"diff {diff}")
    print(f"params {r['params_before']:,} -> {r['params_after']:,} ({100 * (1 - r['params_after'] / r['params_before']):.1f}% "
          f"fewer)  MACs {r['macs_before']:,} -> {r['macs_after']:,}  -> {out}")
    return 0
