"""``prunekit`` command line: a thin layer over the library. User errors exit 2 with one line, no traceback."""

from __future__ import annotations

import argparse
import importlib
import sys

from ._version import __version__
from .errors import PrunekitError

# (command, module under prunekit.commands, one-line help) — each module defines add_arguments(p) and run(args).
COMMANDS = [
    ("run", "run", "run the whole pipeline from a YAML config (train → prune → surgery → finetune → export → ...)"),
    ("train", "train", "train a model (MobileNet V1 by default) and save it"),
    ("eval", "evaluate", "top-1/top-5 accuracy of a saved model"),
    ("summary", "summary", "per-layer table: channels, kernel, groups, params, MACs"),
    ("plan", "plan", "dry run: list channel groups, what would be pruned and why others are left alone; with "
     "--budget, each layer's channels for a MACs/params/latency budget"),
    ("sensitivity", "sensitivity", "accuracy of the model with each channel group pruned alone (adaptive BN)"),
    ("prune", "prune", "gradual (or one-shot) channel pruning during training; writes a masked model + plots"),
    ("surgery", "surgery", "physically remove pruned channels; verified against the masked model"),
    ("export", "export", "export to ONNX / TorchScript / ExportedProgram, verified against PyTorch"),
    ("quantize", "quantize", "int8 static quantization of an ONNX model with ONNX Runtime"),
    ("predict", "predict", "top-k labels for images"),
    ("bench", "bench", "size, MACs, latency and throughput across runtimes, side by side"),
    ("import", "importer", "import Keras MobileNet V1 or timm weights (any timm architecture) into a model directory"),
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


def _size(s: str) -> int:
    from .memory import parse_size

    try:
        return parse_size(s, "--max-memory")
    except PrunekitError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="prunekit", description="Structured channel pruning for CNNs: train, prune, shrink, "
                     "fine-tune, export, quantize, predict, benchmark.",
                     epilog="Run `prunekit COMMAND --help` for the options of a command.")
    parser.add_argument("--version", action="version", version=f"prunekit {__version__}")
    parser.add_argument("--max-memory", type=_size, metavar="SIZE", help="refuse work estimated to need more memory "
                        "than SIZE (e.g. 8G, 512M; default: what the machine has available; also "
                        "$PRUNEKIT_MAX_MEMORY)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, module, help_ in COMMANDS:
        try:
            mod = importlib.import_module(f".commands.{module}", __package__)
        except ModuleNotFoundError as e:
            if e.name and e.name.endswith(f"commands.{module}"):
                continue  # command not shipped in this build
            raise
        p = sub.add_parser(name, help=help_, description=(mod.__doc__ or help_).strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(func=mod.run)
    return parser


def _remove_created_outputs() -> None:
    """A command that failed on a user error leaves no new, half-made output directory behind."""
    import shutil

    from .commands.common import CREATED_DIRS

    while CREATED_DIRS:
        shutil.rmtree(CREATED_DIRS.pop(), ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from .commands.common import CREATED_DIRS

    CREATED_DIRS.clear()  # only directories created by *this* command may be removed on failure
    from .memory import set_max_memory

    set_max_memory(args.max_memory)
    try:
        rc = args.func(args)
        CREATED_DIRS.clear()
        return int(rc or 0)
    except PrunekitError as e:
        msg = " ".join(str(e).split())
        sys.stderr.write(f"prunekit {args.command}: error: {msg}\n")
        _remove_created_outputs()
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
