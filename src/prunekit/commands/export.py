"""Export a model directory to ONNX, TorchScript or a torch.export ExportedProgram, verified against PyTorch.

The export has a dynamic batch axis and carries what inference needs (class names, input size/channels,
mean/std, resize, arch, prunekit version): in ONNX metadata_props / the archive's prunekit.json, and in a
sidecar OUT.json. Every export is reloaded (ONNX Runtime, torch.jit.load, torch.export.load) and compared with
PyTorch at batch 1 and 3: a max abs diff above 1e-4 fails with exit code 2 and nothing is written. A model
saved with pruning masks is exported in its shrunk form (pruned channels removed: same outputs, smaller).

example:
  prunekit export --model runs/shrunk --out model.onnx
  prunekit export --model runs/shrunk --format torchscript --out model.ts
  prunekit export --model runs/shrunk --format exported-program --out model.pt2 --json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_json_arg, positive_int, print_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..deploy import DEFAULT_OPSET, EXPORTERS, FORMATS

    p.add_argument("--model", required=True, help="model directory (masked models are exported shrunk)")
    p.add_argument("--format", choices=FORMATS, help="onnx, torchscript or exported-program (default: from the "
                   "--out suffix .onnx/.ts/.pt2, else onnx)")
    p.add_argument("--out", required=True, help="output file (a directory: writes DIR/model.onnx|.ts|.pt2)")
    p.add_argument("--opset", type=positive_int("--opset"), default=DEFAULT_OPSET,
                   help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--exporter", choices=EXPORTERS, default="auto", help="ONNX exporter: torch.export-based "
                   "'dynamo', TorchScript-based 'legacy', or 'auto' (dynamo, legacy if it fails; default)")
    p.add_argument("--no-verify", dest="verify", action="store_false", help="skip the comparison with PyTorch")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    add_json_arg(p)


def run(args: argparse.Namespace) -> int:
    from ..deploy import SUFFIXES, format_for
    from ..deploy.metadata import check_output
    from ..errors import PrunekitError
    from ..steps import export

    out = Path(args.out)
    fmt = format_for(out, args.format)
    if out.is_dir() or str(args.out).endswith(("/", "\\")):
        out = out / f"model{SUFFIXES[fmt]}"
    if out.suffix.lower() in (".pt", ".pth", ".pkl", ".ckpt", ".bin"):
        raise PrunekitError(f"--out {out}: prunekit never loads {out.suffix} files (pickle); use {SUFFIXES[fmt]}")
    implied = format_for(out) if out.suffix.lower() in (".onnx", ".ts", ".pt2", ".torchscript", ".jit") else fmt
    if implied != fmt:  # runtimes pick the loader by suffix: a mismatch would make the file unusable
        raise PrunekitError(f"--out {out} has the suffix of the {implied} format but --format is {fmt}; use "
                            f"{SUFFIXES[fmt]}")
    if fmt == "onnx" and not 7 <= args.opset <= 30:
        raise PrunekitError(f"--opset must be between 7 and 30, got {args.opset}")
    out = check_output(out, args.overwrite)
    res = export(args.model, out, fmt, opset=args.opset, exporter=args.exporter, verify=args.verify)
    if args.json:
        print_json({**res, "model": args.model})
        return 0
    if res.get("note"):
        print(f"note: {res['note']}")
    how = f"opset {res['opset']}, {res['exporter']} exporter" if fmt == "onnx" else res["exporter"]
    diff = res.get("max_abs_diff")
    check = "verification skipped" if diff is None else (
        f"verified vs PyTorch at batch {' and '.join(map(str, res['verified_batches']))}: max abs diff {diff:.2e}")
    print(f"exported {fmt} ({how}) -> {out} ({res['bytes'] / 1e6:.2f} MB); {check}")
    print(f"metadata embedded and in {res['sidecar']}")
    if res.get("dynamo_error"):
        print(f"note: the dynamo exporter failed ({res['dynamo_error']}); used the legacy exporter")
    if res.get("legacy_reason"):
        print(f"note: {res['legacy_reason']}; used the legacy exporter")
    return 0
