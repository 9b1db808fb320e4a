"""Fuzz the files prunekit reads (issue 21) and record the outcome counts.

Mutates every field of a saved ``model.json`` (a masked MobileNet V1 0.25 directory), of the ``.onnx.json``
sidecar (an ONNX file without embedded metadata), of the metadata embedded in an ONNX file, and of a run config
(YAML): other types, huge / negative / non-finite numbers, long strings, deep nesting, missing and extra keys,
YAML alias bombs. Each mutated input goes to a command that reads it (eval, summary, plan, predict, export,
surgery; predict, quantize; train --config, run), in a fresh process under a 6 GiB address-space limit and a
180 s time limit, two at a time. Outcome classes: ``ok`` (exit 0), ``exit-2`` (one line on stderr, split by
whether the memory estimate or input validation refused), and failures (traceback, other exit codes, several
lines, signals, timeouts).

Writes ``benchmarks/results/fuzz_model_files.{json,md}`` with the counts per outcome class, per target, per
command and per mutation kind, the git commit, package versions and the machine.

example:
  python benchmarks/fuzz_model_files.py --n 400 --seed 1
  python benchmarks/fuzz_model_files.py --n 40 --seed 0 --quick   # the default test suite's sample
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import command_line, loadavg, log, now, write_results  # noqa: E402

import fuzz_inputs as fz  # noqa: E402


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=ROOT).stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def markdown(doc: dict) -> str:
    s = doc["summary"]
    lines = ["# Fuzzing model files, metadata and configs (issue 21)", "",
             f"{s['tried']} mutated inputs (seed {doc['settings']['seed']}); outcome classes: "
             + ", ".join(f"{k} {v}" for k, v in s["outcomes"].items())
             + (" (exit-2 refused by: " + ", ".join(f"{k} {v}" for k, v in s["refused_by"].items()) + ")"
                if s["refused_by"] else "") + ".",
             f"Failures (traceback, other exit code, several stderr lines, signal, timeout): {len(s['failures'])}.",
             "", f"Commit `{doc['commit']}`, {doc['date']}, {doc['wall_s']:.0f} s wall, 2 processes at a time, "
             f"RLIMIT_AS {fz.MEMORY_LIMIT >> 30} GiB, time limit {fz.TIME_LIMIT:.0f} s; machine: "
             f"{doc['machine']['cpu']} ({doc['machine']['available_cores']} cores), torch {doc['machine']['torch']}, "
             f"onnxruntime {doc['machine']['onnxruntime']}; load average {doc['load_start']} -> {doc['load_end']}.",
             "", f"Command: `{doc['command']}`", ""]
    for title, key in (("Per target", "by_target"), ("Per command", "by_command"), ("Per mutation kind", "by_kind")):
        table = s[key]
        classes = sorted({c for row in table.values() for c in row})
        lines += [f"## {title}", "", "| | " + " | ".join(classes) + " |", "|---|" + "---:|" * len(classes)]
        lines += [f"| {k} | " + " | ".join(str(row.get(c, 0)) for c in classes) + " |" for k, row in table.items()]
        lines.append("")
    if s["failures"]:
        lines += ["## Failures", ""] + [f"- `{f['mutation']}` ({f['command']}): {f['outcome']} {f['message']}"
                                        for f in s["failures"]]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=400, help="mutations to run (default 400)")
    p.add_argument("--seed", type=int, default=1, help="which mutations (default 1; the default test suite uses 0)")
    p.add_argument("--quick", action="store_true", help="the default test suite's commands (no `prunekit run`)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fuzz_model_files"))
    args = p.parse_args()

    from prunekit.inference.bench import machine_info

    with tempfile.TemporaryDirectory(prefix="prunekit-fuzz-") as tmp:
        t0 = time.perf_counter()
        load_start = loadavg()
        world = fz.build_world(Path(tmp) / "world")
        everything = fz.all_mutations(world)
        sample = fz.pick(everything, args.n, seed=args.seed)
        done = [0]

        def progress(o: fz.Outcome) -> None:
            done[0] += 1
            if not o.passed or done[0] % 25 == 0:
                log(f"{done[0]}/{len(sample)} {o.mutation} ({o.command}): {o.outcome} {o.message[:120]}")

        commands = {**fz.COMMANDS, "config": fz.COMMANDS["config"][:1]} if args.quick else fz.COMMANDS
        outs = fz.run_all(world, sample, Path(tmp) / "runs", workers=args.workers, progress=progress,
                          commands=commands)
        summary = fz.summarise(outs)
    doc = {"command": command_line(), "date": now(), "commit": git_commit(), "machine": machine_info(),
           "load_start": load_start, "load_end": loadavg(), "wall_s": time.perf_counter() - t0,
           "settings": {"n": args.n, "seed": args.seed, "quick": args.quick, "workers": args.workers,
                        "memory_limit_bytes": fz.MEMORY_LIMIT, "time_limit_s": fz.TIME_LIMIT,
                        "mutations_available": len(everything),
                        "commands": {t: [" ".join(c) for c in cs] for t, cs in commands.items()}},
           "summary": summary, "outcomes": [o.__dict__ for o in outs]}
    j, m = write_results(Path(args.out), doc, markdown(doc))
    log(f"{summary['tried']} mutated inputs: {summary['outcomes']}; wrote {j} and {m}")
    return 0 if not summary["failures"] else 1


if __name__ == "__main__":
    sys.exit(main())
