"""Training throughput with and without active pruning masks (issue 8).

Measures img/s of a full training step (forward + backward + SGD) for MobileNet V1 alpha=1.0 at 28x28 (Fashion-MNIST
shape) and 224x224 (synthetic data), dense vs with 50% of the pointwise channels masked, eager vs torch.compile,
bf16 autocast + channels_last on CUDA; plus the wall time of one full Fashion-MNIST epoch through `prunekit.fit`
(GPU-resident data). Goal: mask overhead <= 3% of step time.

  python benchmarks/gpu_throughput.py                       # full, on the GPU
  python benchmarks/gpu_throughput.py --data-dir DIR        # also time a full Fashion-MNIST epoch
  python benchmarks/gpu_throughput.py --quick               # CPU smoke run: width 0.25, 28x28, few steps, eager
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))

from prunekit.io import write_json, write_text  # noqa: E402
from prunekit.models import create_model  # noqa: E402
from prunekit.pruning import OneShot, PruningConfig, prune_  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_rate(size: int, masks: bool, compiled: bool, device: torch.device, width: float, batch: int, steps: int,
              warmup: int, repeats: int) -> dict:
    torch.manual_seed(0)
    small = size < 64
    model = create_model("mobilenet_v1", width=width, num_classes=10 if small else 1000, in_channels=1 if small else 3,
                         small_input=small).to(device)
    shape = (1 if small else 3, size, size)
    if masks:
        p = prune_(model, PruningConfig(schedule=OneShot(0.5)), shape)
        p.step(0)
    cuda = device.type == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    fwd = torch.compile(model) if compiled else model
    x = torch.randn(batch, *shape, device=device)
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10 if small else 1000, (batch,), device=device)
    model.train()

    def one():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = F.cross_entropy(fwd(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        one()
    rates = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            one()
        sync(device)
        rates.append(batch * steps / (time.perf_counter() - t0))
    return {"size": size, "masks": masks, "compiled": compiled, "batch": batch, "img_per_s": statistics.median(rates),
            "img_per_s_runs": rates}


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


def machine(device: torch.device) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "device": str(device), "cpu_count": os.cpu_count(), "loadavg": os.getloadavg()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def render(result: dict) -> str:
    rows = result["rows"]
    md = [f"# Training throughput ({result['mode']}, {result['machine'].get('gpu', result['machine']['device'])})",
          "", f"`{result['command']}`", "", f"MobileNet V1 width {result['width']}, one training step = forward + backward "
          "+ SGD (Nesterov), bf16 autocast and channels_last on CUDA; synthetic inputs. Masks: 50% of every pointwise "
          "layer's output channels masked by prunekit (mask multiply fused into the BN output).", "",
          "| input | batch | mode | masks | img/s | mask overhead |", "|---|---:|---|---|---:|---:|"]
    for r in rows:
        ov = f"{r['mask_overhead_pct']:+.1f}%" if "mask_overhead_pct" in r else ""
        md.append(f"| {r['size']}x{r['size']} | {r['batch']} | {'compiled' if r['compiled'] else 'eager'} | "
                  f"{'50% masked' if r['masks'] else 'dense'} | {r['img_per_s']:.0f} | {ov} |")
    if "fmnist_epoch" in result:
        e = result["fmnist_epoch"]
        where = ("GPU-resident data with on-device augmentation" if result["machine"]["device"].startswith("cuda")
                 else "in-memory data")
        md += ["", f"Full Fashion-MNIST epoch through `prunekit.fit` (60,000 images, batch {e['batch']}, {where}, "
               f"eager, incl. the 10k-image test pass): {e['seconds']:.1f} s "
               f"({e['img_per_s']:.0f} img/s; test top-1 after 1 epoch {e['test_top1_after_1_epoch']:.2f}%)."]
    if result.get("skipped"):
        md += ["", f"Not measured (--max-seconds reached): {', '.join(result['skipped'])}."]
    md += ["", "Mask overhead = dense img/s / masked img/s - 1 (same input size and mode).", "",
           f"Machine: {json.dumps(result['machine'])}"]
    return "\n".join(md) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CPU smoke run (width 0.25, 28x28, eager, few steps)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--data-dir", help="full Fashion-MNIST directory for the epoch timing")
    ap.add_argument("--max-seconds", type=float, default=0,
                    help="time box: skip the remaining measurements after this many seconds (0: no limit)")
    ap.add_argument("--out", default=None, help="result prefix (default benchmarks/results/gpu_throughput[_quick])")
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.quick:
        sizes, width, batch, steps, warmup, repeats, modes = [28], 0.25, 64, 5, 3, 3, [False]
    else:
        sizes, width, batch, steps, warmup, repeats, modes = [28, 224], 1.0, 256, 20, 5, 5, [False, True]
    prefix = Path(args.out) if args.out else ROOT / "results" / ("gpu_throughput_quick" if args.quick else
                                                                  "gpu_throughput")
    result = {"command": " ".join(sys.argv), "mode": "quick" if args.quick else "full", "width": width,
              "machine": machine(device), "rows": [], "skipped": []}
    rows = result["rows"]
    t_start = time.perf_counter()

    def over() -> bool:
        return bool(args.max_seconds) and time.perf_counter() - t_start > args.max_seconds

    def emit() -> None:  # after every measurement: a time-boxed run keeps what it measured
        for r in rows:
            if r["masks"]:
                dense = next((d for d in rows if not d["masks"] and d["size"] == r["size"]
                              and d["compiled"] == r["compiled"]), None)
                if dense:
                    r["mask_overhead_pct"] = 100 * (dense["img_per_s"] / r["img_per_s"] - 1)
        result["seconds"] = time.perf_counter() - t_start
        write_json(prefix.with_suffix(".json"), result)
        write_text(prefix.with_suffix(".md"), render(result))

    plan = [(c, size, m) for c in modes for size in sizes for m in (False, True)]
    for compiled, size, masks in plan:
        if compiled and args.data_dir and "fmnist_epoch" not in result and not over():
            result["fmnist_epoch"] = fmnist_epoch(args.data_dir, device, width, batch, compiled=False)
            print(f"full Fashion-MNIST epoch {result['fmnist_epoch']['seconds']:.1f} s", flush=True)
            emit()
        name = f"{size}x{size} {'compiled' if compiled else 'eager'} masks={masks}"
        if over():
            result["skipped"].append(name)
            continue
        b = batch if size < 64 else max(32, batch // 2)
        t0 = time.perf_counter()
        r = step_rate(size, masks, compiled, device, width, b, steps, warmup, repeats)
        r["seconds_incl_warmup"] = time.perf_counter() - t0
        rows.append(r)
        print(f"{name:32s} {r['img_per_s']:10.0f} img/s ({r['seconds_incl_warmup']:.0f} s)", flush=True)
        emit()
    if args.data_dir and "fmnist_epoch" not in result and not over():
        result["fmnist_epoch"] = fmnist_epoch(args.data_dir, device, width, batch, compiled=False)
    emit()
    print(render(result))


if __name__ == "__main__":
    main()
