"""Training benchmark: MobileNet V1 on full Fashion-MNIST (60k train / 10k test, 28x28x1), issue 3.

Full mode (GPU; the settings of the issue): width 1.0, SGD + Nesterov momentum 0.9, cosine schedule with 1 warm-up
epoch, peak LR 0.1, label smoothing 0.1, weight decay 5e-5, batch 256, bf16 autocast on CUDA, 30 epochs, random
crop (4 px padding) + horizontal flip.

Quick mode (CPU; ~15 min on 2 shared cores with ``--threads 1``): the same data and optimiser with a width-0.5
model for 5 epochs (width 1.0 trains at ~1/4 the speed on a CPU, too slow for a useful number of epochs). Before
training it measures the training throughput of the width-1.0 model on this CPU (``--probe-steps`` steps of batch
256 after 3 warm-up steps, same loader, augmentation and optimiser; with 1 thread and with all cores).

Usage::

    python benchmarks/train_fmnist.py --quick --data-dir /path/to/fashion-mnist
    python benchmarks/train_fmnist.py --data-dir /path/to/fashion-mnist            # full (GPU)
    python benchmarks/train_fmnist.py --quick --width 1.0 --epochs 3               # any override

Writes ``benchmarks/results/train_fmnist[_quick].{json,md}``; the trained model is saved to
``benchmarks/results/_work/train_fmnist[_quick]/model`` (reusable: ``prune_fmnist.py --dense DIR``).
The machine's load average is recorded throughout: the machine this was developed on is shared, and
throughput drops accordingly.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

MODES = {
    "full": {"width": 1.0, "epochs": 30, "batch_size": 256, "lr": 0.1, "warmup_epochs": 1.0, "weight_decay": 5e-5,
             "label_smoothing": 0.1, "probe_steps": 0},
    "quick": {"width": 0.5, "epochs": 5, "batch_size": 256, "lr": 0.1, "warmup_epochs": 1.0, "weight_decay": 5e-5,
              "label_smoothing": 0.1, "probe_steps": 10},
}


def probe_throughput(data, width: float, batch_size: int, steps: int, device, threads: int | None = None) -> dict:
    """Training img/s of a fresh ``width`` model: ``steps`` timed steps after 3 warm-up steps (real loader)."""
    import torch
    import torch.nn.functional as F

    from prunekit.data import iterate_batches
    from prunekit.train.optim import build_optimizer

    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        model = C.mobilenet(width, seed=0).to(device).train()
        opt = build_optimizer(model, "sgd", 0.1, 5e-5)
        def batches():  # as many epochs as the probe needs (small training subsets)
            for epoch in range(10**6):
                yield from iterate_batches(data, "train", batch_size, train=True, seed=0, epoch=epoch, device=device)

        it = batches()
        la0 = C.loadavg()
        n, t0 = 0, None
        for i, (x, y) in enumerate(it):
            if i == 3:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
            if i >= 3 + steps:
                break
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if i >= 3:
                n += len(y)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        return {"width": width, "batch_size": batch_size, "steps": steps, "images": n, "seconds": dt,
                "img_per_s": n / dt, "threads": torch.get_num_threads(), "load_before": la0, "load_after": C.loadavg()}
    finally:
        torch.set_num_threads(old)


def markdown(doc: dict) -> str:
    r, cfg, env = doc["result"], doc["config"], doc["environment"]
    dev = env.get("gpu") or f"CPU ({env['cpu']}, {env['available_cores']} cores, {env['torch_threads']} torch threads)"
    lines = [f"# Training benchmark: MobileNet V1 on Fashion-MNIST ({doc['mode']})", "",
             f"{doc['created']}. Command: `{doc['command']}`", "",
             f"Data: Fashion-MNIST, {doc['data']['train_images']:,} train / {doc['data']['test_images']:,} test "
             f"images, 28x28x1, random crop (pad 4) + flip. Model: MobileNet V1 width {cfg['width']} "
             f"(small-input stem), {r['params']:,} params, {r['macs'] / 1e6:.2f} M MACs (conv + linear only). "
             f"Optimiser: SGD, Nesterov momentum 0.9, peak LR {cfg['lr']}, cosine with {cfg['warmup_epochs']} warm-up "
             f"epoch(s), weight decay {cfg['weight_decay']}, label smoothing {cfg['label_smoothing']}, batch "
             f"{cfg['batch_size']}, {cfg['epochs']} epochs, seed {cfg['seed']}"
             f"{', bf16 autocast' if env['device'].startswith('cuda') else ', fp32'}.", "",
             f"Device: {dev}; torch {env['torch']}. Load average (1/5/15 min) at start {env['load_start']}, "
             f"during training {doc['load']}.", "",
             "| metric | value |", "|---|---:|",
             f"| test top-1 | **{r['top1']:.2f}%** |", f"| test top-5 | {r['top5']:.2f}% |",
             f"| epochs | {r['epochs_done']:g} |",
             f"| wall time (training + per-epoch evaluation) | {r['wall_s']:.0f} s |",
             f"| training time (epochs only) | {r['train_s']:.0f} s |",
             f"| training throughput | {r['img_per_s']:.0f} img/s |", ""]
    if doc.get("probe"):
        lines += ["Training throughput probe (same loader/optimiser, batch 256, fresh model):", "",
                  "| width | threads | img/s | steps | load before -> after |", "|---:|---:|---:|---:|---|"]
        for p in doc["probe"]:
            lines.append(f"| {p['width']} | {p['threads']} | {p['img_per_s']:.0f} | {p['steps']} | "
                         f"{p['load_before']} -> {p['load_after']} |")
        lines.append("")
    lines += ["Per epoch:", "", "| epoch | test top-1 | train loss | img/s |", "|---:|---:|---:|---:|"]
    for c in r["curve"]:
        lines.append(f"| {c['epoch']:g} | {c['test_top1']:.2f}% | {c['train_loss']:.4f} | {c['img_per_s']:.0f} |")
    lines.append("")
    if doc["mode"] == "quick":
        lines += [f"*Quick mode (CPU): {doc['quick_note']} Throughput is depressed by whatever else shared the "
                  "machine (see load).*", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CPU settings: width 0.5, 5 epochs (+ width-1.0 probe)")
    ap.add_argument("--data-dir", help="Fashion-MNIST IDX directory (default: $PRUNEKIT_DATA / system / shared)")
    ap.add_argument("--width", type=float)
    ap.add_argument("--epochs", type=float)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-subset", type=int, default=0, help="use N training images (class-balanced; 0: all)")
    ap.add_argument("--probe-steps", type=int, help="width-1.0 throughput probe steps (0: skip)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ap.add_argument("--out", help="output prefix (default benchmarks/results/train_fmnist[_quick])")
    ap.add_argument("--work", help="model/run directory (default benchmarks/results/_work/train_fmnist[_quick])")
    args = ap.parse_args(argv)

    from prunekit.saved import save
    from prunekit.train import DistContext, TrainConfig, fit, pick_device

    mode = "quick" if args.quick else "full"
    cfg = dict(MODES[mode])
    for k in ("width", "epochs", "batch_size", "lr", "probe_steps"):
        if getattr(args, k) is not None:
            cfg[k] = getattr(args, k)
    cfg["seed"] = args.seed
    C.setup_threads(args.threads)
    device = pick_device(args.device)
    env = C.environment(device)
    suffix = "_quick" if args.quick else ""
    prefix = Path(args.out) if args.out else C.RESULTS / f"train_fmnist{suffix}"
    work = Path(args.work) if args.work else C.WORK / f"train_fmnist{suffix}"
    if work.exists():
        shutil.rmtree(work)
    t_start = time.perf_counter()
    data = C.load_fmnist(args.data_dir, args.train_subset)
    C.log(f"data: {len(data.train):,} train / {len(data.test):,} test from {data.source}; device {device}, "
          f"{env['torch_threads']} threads, load {C.loadavg()}")

    probe = []
    if cfg["probe_steps"]:
        for threads in sorted({env["available_cores"], env["torch_threads"], 1}, reverse=True):
            p = probe_throughput(data, 1.0, cfg["batch_size"], cfg["probe_steps"], device, threads)
            C.log(f"probe: width 1.0 trains at {p['img_per_s']:.0f} img/s with {threads} thread(s) "
                  f"(load {p['load_after']})")
            probe.append(p)

    model = C.mobilenet(cfg["width"], cfg["seed"])
    pm = C.params_macs(model)
    tcfg = TrainConfig(epochs=cfg["epochs"], batch_size=cfg["batch_size"], lr=cfg["lr"], optimizer="sgd",
                       momentum=0.9, nesterov=True, weight_decay=cfg["weight_decay"],
                       label_smoothing=cfg["label_smoothing"], warmup_epochs=cfg["warmup_epochs"], seed=cfg["seed"],
                       amp=True)
    C.log(f"training MobileNet V1 width {cfg['width']} ({pm['params']:,} params, {pm['macs'] / 1e6:.2f} M MACs) for "
          f"{cfg['epochs']} epochs")
    with C.LoadSampler() as ls:
        res = fit(model, data, tcfg, work, ctx=DistContext(device=device), desc=f"train w{cfg['width']}")
    summ = C.train_summary(res, work / "metrics.jsonl")
    summ.update(pm)
    model.cpu()
    spec = C.model_spec(data, cfg["width"], {"metrics": {"test": res["test"]}, "history": [  # keys load() accepts
        {"step": "train", **tcfg.__dict__, "train_images": len(data.train)}]})
    save(model, work / "model", spec)
    doc = {"benchmark": "train_fmnist", "issue": 3, "created": C.now(), "mode": mode, "command": C.command_line(),
           "config": cfg, "train_config": tcfg.__dict__, "data": {"source": data.source, **data.notes},
           "environment": env, "load": ls.summary(), "load_end": C.loadavg(), "probe": probe, "result": summ,
           "model_dir": str(work / "model"), "seconds_total": time.perf_counter() - t_start}
    if mode == "quick":
        doc["quick_note"] = (f"width {cfg['width']} (not 1.0) for {cfg['epochs']:g} epochs (not 30) on "
                             + (f"a class-balanced {len(data.train):,}-image subset of the training set"
                                if data.notes["train_subset"] else f"the full {len(data.train):,}-image training set")
                             + ", fp32 on CPU; otherwise the issue's settings.")
    j, m = C.write_results(prefix, doc, markdown(doc))
    C.log(f"top-1 {summ['top1']:.2f}%  top-5 {summ['top5']:.2f}%  wall {summ['wall_s']:.0f} s  "
          f"{summ['img_per_s']:.0f} img/s  ->  {j}, {m}; model -> {work / 'model'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
