"""Training-step cost of active pruning masks: dense vs 50%-masked MobileNet V1 (issues 8 and 20).

For each input size and mode (eager, torch.compile) a dense and a masked model (same init; 50% of every
pointwise group masked by prunekit) are built and warmed up once, then timed in *interleaved* blocks of
``--steps`` training steps (forward + backward + SGD Nesterov), alternating which one goes first, so that a
shared machine's load drifts hit both alike. Reported: median time per step of each, the spread over blocks,
and the mask overhead = median over blocks of (masked step time / dense step time of the same round) - 1,
on the wall clock, and for ``--quick`` on a CPU primarily on this process's CPU time (other jobs on a shared
machine disturb it far less).
Before timing, the compiled masked model's output is checked against the eager masked model (a stale compiled
graph would silently time the dense model). Goal (issue 20): overhead <= 3% in eager mode.

  python benchmarks/gpu_throughput.py                       # full, on the GPU: width 1.0, 28x28 + 224x224
  python benchmarks/gpu_throughput.py --data-dir DIR        # also time one full Fashion-MNIST epoch via fit
  python benchmarks/gpu_throughput.py --quick               # CPU proxy: width 0.5, 28x28, batch 32, 1 thread

Results: ``benchmarks/results/gpu_throughput[_quick].{json,md}`` with the git commit, package versions,
machine and load average. ``--baseline OLD.json`` adds the overheads of an earlier run (e.g. another commit)
to the report for comparison.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))
sys.path.insert(0, str(ROOT))

from _common import LoadSampler, command_line, environment, loadavg, now, write_results  # noqa: E402

from prunekit.models import create_model  # noqa: E402
from prunekit.pruning import OneShot, PruningConfig, prune_  # noqa: E402


def git_commit() -> dict:
    """HEAD of the repository this script lives in, and whether the work tree had local changes."""
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain", "--", "src"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Runner:
    """One model (dense or masked) with its optimizer and fixed synthetic batch; ``block(n)`` times n steps."""

    def __init__(self, size: int, masks: bool, compiled: bool, device: torch.device, width: float, batch: int):
        torch.manual_seed(0)
        small = size < 64
        self.device, self.masks = device, masks
        self.model = create_model("mobilenet_v1", width=width, num_classes=10 if small else 1000,
                                  in_channels=1 if small else 3, small_input=small).to(device)
        shape = (1 if small else 3, size, size)
        self.pruner = None
        if masks:
            self.pruner = prune_(self.model, PruningConfig(schedule=OneShot(0.5)),
                                 shape)
            self.pruner.step(0)
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
        self.fwd = torch.compile(self.model) if compiled else self.model
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(batch, *shape, generator=g).to(device)
        if self.cuda:
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.y = torch.randint(0, 10 if small else 1000, (batch,), generator=g).to(device)
        self.model.train()

    def step(self) -> None:
        if self.pruner is not None:
            self.pruner.step(1)  # the trainer calls it before every forward; a no-op after the one-shot prune
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cuda):
            loss = F.cross_entropy(self.fwd(self.x).float(), self.y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def block(self, n: int) -> tuple[float, float]:
        """Seconds per step over n steps: wall clock, and this process's CPU time."""
        sync(self.device)
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(n):
            self.step()
        sync(self.device)
        return (time.perf_counter() - t0) / n, (time.process_time() - c0) / n

    def check_compiled(self) -> float:
        """Max abs difference between the compiled and the eager model's output (eval mode, no grad)."""
        self.model.eval()
        with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cuda):
            d = float((self.fwd(self.x).float() - self.model(self.x).float()).abs().max())
        self.model.train()
        return d


def spread(xs: list[float]) -> dict:
    q = statistics.quantiles(xs, n=4) if len(xs) >= 2 else [xs[0]] * 3
    return {"median": statistics.median(xs), "q1": q[0], "q3": q[2], "min": min(xs), "max": max(xs)}


def measure_pair(size: int, compiled: bool, device: torch.device, width: float, batch: int, steps: int,
                 warmup: int, repeats: int, clock: str) -> dict:
    t0 = time.perf_counter()
    runners = {m: Runner(size, m, compiled, device, width, batch) for m in (False, True)}
    check = None
    for r in runners.values():  # compiles here (first call), then warms up
        for _ in range(warmup):
            r.step()
    if compiled:
        # a compiled graph that ignored the masks (e.g. reused from the dense model) must not be timed
        check = runners[True].check_compiled()
    setup = time.perf_counter() - t0
    wall: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    for i in range(repeats):
        for m in ((False, True) if i % 2 == 0 else (True, False)):
            w, c = runners[m].block(steps)
            wall[m].append(w)
            cpu[m].append(c)

    def ratios(t: dict[bool, list[float]]) -> list[float]:
        return [100 * (b / a - 1) for a, b in zip(t[False], t[True], strict=True)]

    times = cpu if clock == "cpu" else wall
    row = {"size": size, "compiled": compiled, "batch": batch, "steps_per_block": steps, "blocks": repeats,
           "clock": clock, "dense_ms": spread([1e3 * t for t in times[False]]),
           "masked_ms": spread([1e3 * t for t in times[True]]), "overhead_pct": spread(ratios(times)),
           "wall_overhead_pct": spread(ratios(wall)), "cpu_overhead_pct": spread(ratios(cpu)),
           "setup_s": setup, "seconds": time.perf_counter() - t0,
           "dense_img_per_s": batch / statistics.median(wall[False]),
           "masked_img_per_s": batch / statistics.median(wall[True])}
    if check is not None:
        row["compiled_vs_eager_max_abs_diff"] = check
    return row


def fmnist_epoch(data_dir: str, device: torch.device, width: float, batch: int, compiled: bool) -> dict:
    from prunekit.data import load_data
    from prunekit.train import TrainConfig, fit
    from prunekit.train.distributed import DistContext

    data = load_data("fashion-mnist", data_dir)
    torch.manual_seed(0)
    model = create_model("mobilenet_v1", width=width, num_classes=10, in_channels=1, small_input=True)
    t0 = time.perf_counter()
    res = fit(model, data, TrainConfig(epochs=1, batch_size=batch, lr=0.1, compile=compiled), None,
              ctx=DistContext(device=device), progress=False, log=lambda s: None)
    sec = time.perf_counter() - t0
    return {"seconds": sec, "img_per_s": len(data.train) / sec, "test_top1_after_1_epoch": res["test"]["top1"],
            "batch": batch}


def render(result: dict) -> str:
    env, git = result["machine"], result["git"]
    where = env.get("gpu", f"CPU, {env['torch_threads']} thread(s)")
    md = [f"# Mask overhead per training step ({result['mode']}, {where})", "",
          f"`{result['command']}`", "",
          f"Commit `{git['commit']}`{' (src/ had local changes)' if git['dirty'] else ''}, {result['date']}.", "",
          f"MobileNet V1 width {result['width']}; one step = forward + backward + SGD (Nesterov) on a fixed synthetic "
          "batch" + (", bf16 autocast + channels_last" if "gpu" in env else "") + ". Masked: 50% of every pointwise "
          "group masked by prunekit (one-shot L1). Dense and masked models are timed in interleaved blocks "
          f"({result['steps']} steps each, alternating order); overhead = median over blocks of masked/dense - 1 "
          f"(q1..q3 in brackets). Step times and the first overhead use the {result['clock']} clock"
          + (" (this process's CPU time: on a shared CPU it is far less disturbed by other jobs than wall time)"
             if result["clock"] == "cpu" else "") + ".", "",
          "| input | batch | mode | dense ms/step | masked ms/step | mask overhead | wall-clock overhead | "
          "compiled check |", "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        d, m, o, ow = r["dense_ms"], r["masked_ms"], r["overhead_pct"], r.get("wall_overhead_pct", r["overhead_pct"])
        chk = f"{r['compiled_vs_eager_max_abs_diff']:.1e}" if "compiled_vs_eager_max_abs_diff" in r else ""
        md.append(f"| {r['size']}x{r['size']} | {r['batch']} | {'compiled' if r['compiled'] else 'eager'} | "
                  f"{d['median']:.2f} [{d['q1']:.2f}..{d['q3']:.2f}] | {m['median']:.2f} [{m['q1']:.2f}..{m['q3']:.2f}] "
                  f"| {o['median']:+.1f}% [{o['q1']:+.1f}..{o['q3']:+.1f}] | {ow['median']:+.1f}% "
                  f"[{ow['q1']:+.1f}..{ow['q3']:+.1f}] | {chk} |")
    base = result.get("baseline")
    if base:
        md += ["", f"Baseline `{base['file']}` (commit `{base['commit']}`, {base.get('clock') or 'wall'} clock): "
               + "; ".join(f"{b['size']}x{b['size']} {'compiled' if b['compiled'] else 'eager'} "
                           f"{b['overhead_pct']:+.1f}%" for b in base["rows"]) + "."]
    if "fmnist_epoch" in result:
        e = result["fmnist_epoch"]
        md += ["", f"Full Fashion-MNIST epoch through `prunekit.fit` (60,000 images, batch {e['batch']}, "
               f"dense, eager, incl. the 10k-image test pass): {e['seconds']:.1f} s ({e['img_per_s']:.0f} img/s; "
               f"test top-1 after 1 epoch {e['test_top1_after_1_epoch']:.2f}%)."]
    if result.get("skipped"):
        md += ["", f"Not measured (--max-seconds reached): {', '.join(result['skipped'])}."]
    la = result.get("load", {})
    md += ["", f"Load average (1 min): start {env.get('load_start')}, end {result.get('load_end')}, "
           f"sampled {la.get('load1_min')}..{la.get('load1_max')} (mean {la.get('load1_mean')}).",
           "", f"Machine: {json.dumps(env)}"]
    return "\n".join(md) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CPU proxy (width 0.5, 28x28, batch 32, 1 thread)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (quick default: 1)")
    ap.add_argument("--width", type=float, default=None)
    ap.add_argument("--batch", type=int, default=None, help="batch at 28x28 (224x224 uses half, at least 32)")
    ap.add_argument("--sizes", default=None, help="comma-separated input sizes (default full 28,224; quick 28)")
    ap.add_argument("--steps", type=int, default=None, help="training steps per timed block")
    ap.add_argument("--repeats", type=int, default=None, help="timed blocks per model")
    ap.add_argument("--no-compile", action="store_true", help="eager only")
    ap.add_argument("--clock", choices=["wall", "cpu"], default=None,
                    help="what step times and the overhead use (default: cpu for --quick on a CPU, else wall)")
    ap.add_argument("--data-dir", help="full Fashion-MNIST directory for the epoch timing (full mode)")
    ap.add_argument("--max-seconds", type=float, default=0,
                    help="time box: skip the remaining measurements after this many seconds (0: no limit)")
    ap.add_argument("--baseline", help="an earlier result JSON whose overheads the report should show")
    ap.add_argument("--out", default=None, help="result prefix (default benchmarks/results/gpu_throughput[_quick])")
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.quick:
        width, batch, sizes, steps, warmup, repeats, threads = 0.5, 32, [28], 8, 3, 30, 1
    else:
        width, batch, sizes, steps, warmup, repeats, threads = 1.0, 256, [28, 224], 20, 5, 7, None
    width = args.width or width
    batch = args.batch or batch
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else sizes
    steps, repeats = args.steps or steps, args.repeats or repeats
    threads = args.threads or threads
    if threads:
        torch.set_num_threads(threads)
    compile_ok = not args.no_compile and (device.type == "cuda" or bool(shutil.which("g++") or shutil.which("c++")))
    modes = [False, True] if compile_ok else [False]
    # Dynamo does not guard on module hooks by default: a masked model with hook-applied masks compiled after a
    # dense one of the same class would silently reuse the dense graph. Guard on them (the check above verifies).
    import torch._dynamo.config as dcfg

    dcfg.skip_nnmodule_hook_guards = False
    prefix = Path(args.out) if args.out else ROOT / "results" / ("gpu_throughput_quick" if args.quick else
                                                                  "gpu_throughput")
    clock = args.clock or ("cpu" if args.quick and device.type == "cpu" else "wall")
    result = {"command": command_line(), "date": now(), "mode": "quick" if args.quick else "full", "width": width,
              "clock": clock,
              "steps": steps, "git": git_commit(), "machine": environment(device), "rows": [], "skipped": []}
    if args.baseline:
        b = json.loads(Path(args.baseline).read_text())
        result["baseline"] = {"file": args.baseline, "commit": b.get("git", {}).get("commit"), "clock": b.get("clock"),
                              "rows": [{"size": r["size"], "compiled": r["compiled"],
                                        "overhead_pct": r["overhead_pct"]["median"]} for r in b.get("rows", [])]}
    t_start = time.perf_counter()

    def over() -> bool:
        return bool(args.max_seconds) and time.perf_counter() - t_start > args.max_seconds

    with LoadSampler(every=10.0) as sampler:
        def emit() -> None:  # after every measurement: a time-boxed run keeps what it measured
            result["seconds"] = time.perf_counter() - t_start
            result["load"], result["load_end"] = sampler.summary(), loadavg()
            write_results(prefix, result, render(result))

        for compiled in modes:
            for size in sizes:
                name = f"{size}x{size} {'compiled' if compiled else 'eager'}"
                if over():
                    result["skipped"].append(name)
                    continue
                b = batch if size < 64 else max(32, batch // 2)
                r = measure_pair(size, compiled, device, width, b, steps, warmup, repeats, clock)
                result["rows"].append(r)
                print(f"{name:16s} dense {r['dense_ms']['median']:8.2f} ms  masked {r['masked_ms']['median']:8.2f} ms"
                      f"  overhead {r['overhead_pct']['median']:+6.1f}% ({clock}), "
                      f"{r['wall_overhead_pct']['median']:+6.1f}% (wall)  ({r['seconds']:.0f} s)", flush=True)
                emit()
        if args.data_dir and not args.quick:
            if over():
                result["skipped"].append("Fashion-MNIST epoch")
            else:
                result["fmnist_epoch"] = fmnist_epoch(args.data_dir, device, width, batch, compiled=False)
        emit()
    print(render(result))


if __name__ == "__main__":
    main()
