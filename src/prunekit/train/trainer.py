"""The training loop: short, resumable from any checkpoint, and identical when resumed.

``fit`` knows nothing about pruning: a pruner is a callback whose ``on_step_begin(step)`` may update
masks (and return a log record) and whose ``state_dict`` rides along in checkpoints.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..data import DataBundle, iterate_batches, num_batches
from ..errors import PrunekitError
from ..io import atomic_write, torch_load, torch_save
from .distributed import DistContext, all_reduce_sum
from .optim import OPTIMIZERS, build_optimizer, cosine_lr, set_lr

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


@dataclass
class TrainConfig:
    """Hyper-parameters of one training (or fine-tuning) stage."""

    epochs: float = 10
    batch_size: int = 128
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-5
    label_smoothing: float = 0.1
    warmup_epochs: float = 1.0
    min_lr: float = 0.0
    seed: int = 0
    augment: bool = True
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    channels_last: bool = True  # on CUDA
    compile: bool = False
    sync_bn: bool = False  # synchronised BatchNorm under DDP (CUDA and CPU/gloo)
    num_workers: int = 0
    eval_batch_size: int = 512
    checkpoint_every: int = 0  # steps; 0 = at the end of every epoch only
    max_steps: int = 0  # stop early after this many steps (0 = no limit; for tests and smoke runs)
    distill: float = 0.0  # weight of the distillation loss (needs a teacher); 0 = plain cross-entropy
    distill_temperature: float = 4.0

    def validate(self) -> TrainConfig:
        def pos(name, integer=False, allow_zero=False):
            v = getattr(self, name)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            ok = ok and (v >= 0 if allow_zero else v > 0) and (not integer or float(v).is_integer())
            if not ok:
                kind = "integer" if integer else "number"
                raise PrunekitError(f"train.{name} must be a {'non-negative' if allow_zero else 'positive'} {kind}, "
                                    f"got {v!r}")

        pos("epochs", allow_zero=True)
        pos("batch_size", integer=True)
        pos("lr")
        pos("eval_batch_size", integer=True)
        for n in ("weight_decay", "warmup_epochs", "min_lr", "momentum"):
            pos(n, allow_zero=True)
        for n in ("checkpoint_every", "max_steps", "num_workers", "seed"):
            pos(n, integer=True, allow_zero=True)
        if not 0 <= self.distill <= 1:
            raise PrunekitError(f"distill must be in [0, 1], got {self.distill}")
        pos("distill_temperature")
        if not 0 <= self.label_smoothing < 1:
            raise PrunekitError(f"train.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.optimizer not in OPTIMIZERS:
            raise PrunekitError(f"train.optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        return self


class Callback(Protocol):
    def on_step_begin(self, step: int) -> dict | None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def accuracy(logits: torch.Tensor, y: torch.Tensor, ks: Sequence[int] = (1, 5)) -> list[int]:
    """Number of correct predictions in the top-k, for each k."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hit = top.eq(y[:, None])
    return [int(hit[:, : min(k, kmax)].any(1).sum()) for k in ks]


@torch.no_grad()
def evaluate(model: nn.Module, data: DataBundle, split: str = "test", batch_size: int = 512,
             device: torch.device | str = "cpu", ctx: DistContext | None = None, amp: bool = False,
             max_batches: int = 0) -> dict[str, float]:
    """Top-1/top-5 accuracy (percent) and mean loss over a split (reduced across ranks under DDP)."""
    ctx = ctx or DistContext()
    device = torch.device(device)
    if device.type == "cpu":  # refuse a batch that cannot fit before the first one is built
        from ..memory import check_inference

        n = len(getattr(data, split, ()) or ())
        check_inference(model, (data.channels, *data.size), max(1, min(batch_size, n)), "evaluation")
    was = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64)
    for i, (x, y) in enumerate(iterate_batches(data, split, batch_size, train=False, device=device,
                                               rank=ctx.rank, world=ctx.world)):
        if max_batches and i >= max_batches:
            break
        if next(model.parameters()).dtype == torch.float64:
            x = x.double()
        with _autocast(device, amp):
            logits = model(x).float()
        c1, c5 = accuracy(logits, y)
        sums += torch.tensor([c1, c5, float(F.cross_entropy(logits, y, reduction="sum")), len(y)], dtype=torch.float64)
    all_reduce_sum(sums)
    model.train(was)
    n = max(1.0, float(sums[3]))
    return {"top1": 100 * float(sums[0]) / n, "top5": 100 * float(sums[1]) / n, "loss": float(sums[2]) / n,
            "n": int(sums[3])}


def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fingerprint(cfg: TrainConfig) -> dict[str, Any]:
    d = asdict(cfg)
    for k in ("num_workers", "eval_batch_size", "checkpoint_every", "compile", "max_steps"):
        d.pop(k)
    return d


def fit(model: nn.Module, data: DataBundle, cfg: TrainConfig, out_dir: str | Path | None = None, *,
        callbacks: Sequence[Callback] = (), resume: bool = False, ctx: DistContext | None = None,
        progress: bool | None = None, log: Callable[[str], None] = print, desc: str = "train",
        teacher: nn.Module | None = None) -> dict[str, Any]:
    """Train ``model`` on ``data.train``; evaluate on ``data.test`` each epoch.

    Writes ``checkpoint.pt`` (atomic; model, optimizer, step, RNG and callback states) and ``metrics.jsonl``
    to ``out_dir`` (rank 0 only). With ``resume=True`` and a checkpoint present, training continues from it and
    ends with exactly the weights an uninterrupted run would have. With ``teacher`` and ``cfg.distill > 0`` the
    loss is ``(1 - a) * cross-entropy + a * T^2 * KL(student/T || teacher/T)`` (Hinton et al., 2015).
    """
    if progress is False:  # no bar: plain tqdm (tqdm.auto warns in notebooks without ipywidgets)
        from tqdm import tqdm
    else:
        from tqdm.auto import tqdm

    cfg.validate()
    ctx = ctx or DistContext()
    device = ctx.device
    out = Path(out_dir) if out_dir is not None else None
    steps_per_epoch = num_batches(len(data.train), cfg.batch_size, drop_last=True)
    if steps_per_epoch == 0:
        raise PrunekitError(f"batch size {cfg.batch_size} is larger than the training set ({len(data.train)} images)")
    if device.type == "cpu":  # refuse batches that cannot fit before the first step
        from ..memory import check_inference, check_training

        shape = (data.channels, *data.size)
        check_training(model, shape, cfg.batch_size)
        check_inference(model, shape, max(1, min(cfg.eval_batch_size, len(data.test))), "evaluation")
    total = int(round(cfg.epochs * steps_per_epoch))
    stop = min(total, cfg.max_steps) if cfg.max_steps else total  # max_steps stops early; the LR schedule stays
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    model.to(device)
    if device.type == "cuda" and cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum, cfg.nesterov)
    param_dtype = next(model.parameters()).dtype
    step, metrics_rows = 0, []
    rows_at_checkpoint = None  # metrics.jsonl rows that the resumed checkpoint had seen

    ckpt_path = out / CHECKPOINT if out else None
    if ckpt_path is not None and ctx.is_main:  # temp files left by a kill during a checkpoint write
        for tmp in out.glob(f".{CHECKPOINT}.*.tmp"):
            tmp.unlink(missing_ok=True)
    if resume and ckpt_path and ckpt_path.exists():
        ck = torch_load(ckpt_path, "checkpoint")
        if not (isinstance(ck, dict) and {"model", "optimizer", "step", "rng", "fingerprint"} <= set(ck)):
            raise PrunekitError(f"{ckpt_path} is not a prunekit training checkpoint; use a new --out directory or "
                                "run without --resume")
        if ck.get("fingerprint") != _fingerprint(cfg):
            raise PrunekitError(f"{ckpt_path} was written with a different training config; use a new --out "
                                "directory or run without --resume")
        try:  # same training config but another model (e.g. a different --width) or pruning setup
            model.load_state_dict(ck["model"])
            optimizer.load_state_dict(ck["optimizer"])
            for cb, st in zip(callbacks, ck.get("callbacks", []), strict=False):
                cb.load_state_dict(st)
            _set_rng_state(ck["rng"])
            step = int(ck["step"])
            rows_at_checkpoint = ck.get("metrics_rows")
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
            first = (lines[1] if len(lines) > 1 and lines[0].endswith(":") else lines[0])[:200]
            raise PrunekitError(f"{ckpt_path} does not match this model or pruning setup ({first}); use a new --out "
                                "directory or run without --resume") from None
        log(f"[{desc}] resumed from {ckpt_path} at step {step}/{total}")
    if out and ctx.is_main:
        metrics_rows = _read_metrics(out / METRICS, max_step=step)
        if isinstance(rows_at_checkpoint, int):  # exact: also drops a callback row of the resume step itself,
            # which a killed run may have appended after the checkpoint (and which is written again now)
            metrics_rows = _read_metrics(out / METRICS, max_step=2**62)[:rows_at_checkpoint]
        _write_metrics(out / METRICS, metrics_rows)
    n_rows = [len(metrics_rows)]

    def append_metrics(row: dict) -> None:
        _append_metrics(out / METRICS, row)
        n_rows[0] += 1

    if device.type == "cuda":  # datasets that fit: keep them on the GPU, augment there (no 2-core loader stall)
        data = data.to(device)
    if cfg.distill > 0:
        if teacher is None:
            raise PrunekitError("distill > 0 needs a teacher model (e.g. the dense model before pruning)")
        teacher = teacher.to(device).eval()
        for p_ in teacher.parameters():
            p_.requires_grad_(False)
    train_model: nn.Module = model
    restore_bn = None
    if ctx.enabled:
        if cfg.sync_bn:
            from .syncbn import swap_sync_batchnorm

            restore_bn = swap_sync_batchnorm(model, device)
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=True)
    if cfg.compile:
        train_model = torch.compile(train_model)

    def save_checkpoint(at_step: int) -> None:
        if not (ckpt_path and ctx.is_main):
            return
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": at_step,
                 "callbacks": [cb.state_dict() for cb in callbacks], "rng": _rng_state(),
                 "fingerprint": _fingerprint(cfg), "metrics_rows": n_rows[0]}
        torch_save(ckpt_path, state)

    last_eval: dict[str, Any] = {}
    show = progress if progress is not None else None
    start_time = time.perf_counter()
    lazy = device.type == "cuda"  # GPU: accumulate loss/accuracy on the device, check finiteness every 50 steps
    while step < stop:
        epoch, start_batch = divmod(step, steps_per_epoch)
        model.train()
        n_seen, loss_sum, correct, t0 = 0, 0.0, 0, time.perf_counter()
        if lazy:
            loss_acc = torch.zeros((), device=device, dtype=torch.float64)
            correct_acc = torch.zeros((), device=device, dtype=torch.int64)
        batches = iterate_batches(data, "train", cfg.batch_size, train=True, seed=cfg.seed, epoch=epoch,
                                  start_batch=start_batch, device=device, rank=ctx.rank, world=ctx.world,
                                  augment=cfg.augment, num_workers=cfg.num_workers)
        epoch_end = min(stop, (epoch + 1) * steps_per_epoch)
        bar = tqdm(total=epoch_end - step, desc=f"[{desc}] epoch {epoch + 1}/{math.ceil(total / steps_per_epoch)}",
                   disable=True if (not ctx.is_main or show is False) else (None if show is None else False),
                   leave=False, unit="step",
                   mininterval=1.0, dynamic_ncols=True)
        for x, y in batches:
            if step >= epoch_end:
                break
            for cb in callbacks:
                rec = cb.on_step_begin(step)
                if rec and out and ctx.is_main:
                    append_metrics({"step": step, "epoch": step / steps_per_epoch, **rec})
            set_lr(optimizer, cosine_lr(step, total, cfg.lr, warmup, cfg.min_lr))
            if param_dtype == torch.float64:  # double-precision models (exactness checks) get double inputs
                x = x.double()
            if device.type == "cuda" and cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with _autocast(device, cfg.amp):
                logits = train_model(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
                if cfg.distill > 0:
                    with torch.no_grad():
                        t_logits = teacher(x).float()
                    t = cfg.distill_temperature
                    kd = F.kl_div(F.log_softmax(logits.float() / t, 1), F.log_softmax(t_logits / t, 1),
                                  reduction="batchmean", log_target=True) * t * t
                    loss = (1 - cfg.distill) * loss + cfg.distill * kd
            if not lazy and not torch.isfinite(loss):
                raise PrunekitError(f"training diverged at step {step} (loss={loss.item()}); lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            n_seen += len(y)
            if lazy:  # no host sync per step: the GPU runs ahead of Python
                loss_acc += loss.detach().double() * len(y)
                correct_acc += (logits.detach().argmax(1) == y).sum()
                if step % 50 == 0 and not bool(torch.isfinite(loss_acc)):
                    raise PrunekitError(f"training diverged by step {step} (non-finite loss); lower --lr")
            else:
                loss_sum += float(loss.detach()) * len(y)
                correct += int((logits.detach().argmax(1) == y).sum())
            bar.update(1)
            if bar.n % 50 == 0 and not bar.disable:
                ls, cs = (float(loss_acc), int(correct_acc)) if lazy else (loss_sum, correct)
                bar.set_postfix(loss=f"{ls / n_seen:.3f}", acc=f"{100 * cs / n_seen:.1f}")
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < epoch_end:
                save_checkpoint(step)
        bar.close()
        if lazy:
            loss_sum, correct = float(loss_acc), int(correct_acc)
            if not math.isfinite(loss_sum):
                raise PrunekitError(f"training diverged by step {step} (non-finite loss); lower --lr")
        if step < min(total, (epoch + 1) * steps_per_epoch):  # stopped by max_steps: checkpoint, no epoch row
            save_checkpoint(step)
            break
        seconds = time.perf_counter() - t0
        last_eval = evaluate(model, data, "test", cfg.eval_batch_size, device, ctx, cfg.amp)
        stats = torch.tensor([n_seen, loss_sum, correct], dtype=torch.float64)
        all_reduce_sum(stats)
        row = {"step": step, "epoch": step / steps_per_epoch, "lr": optimizer.param_groups[0]["lr"],
               "train_loss": float(stats[1] / max(1, stats[0])), "train_top1": float(100 * stats[2] / max(1, stats[0])),
               "test_top1": last_eval["top1"], "test_top5": last_eval["top5"], "test_loss": last_eval["loss"],
               "seconds": seconds, "img_per_s": float(stats[0]) / max(seconds, 1e-9)}
        for cb in callbacks:
            if hasattr(cb, "summary"):
                row.update(cb.summary())
        if out and ctx.is_main:
            append_metrics(row)
        log(f"[{desc}] epoch {row['epoch']:.2f}  loss {row['train_loss']:.4f}  train {row['train_top1']:.2f}%  "
            f"test top-1 {row['test_top1']:.2f}%  top-5 {row['test_top5']:.2f}%  ({row['img_per_s']:.0f} img/s)")
        save_checkpoint(step)
    if not last_eval:  # resumed after the last step, or zero epochs
        last_eval = evaluate(model, data, "test", cfg.eval_batch_size, device, ctx, cfg.amp)
    if restore_bn is not None:
        restore_bn()
    return {"steps": step, "total_steps": total, "test": last_eval,
            "seconds": time.perf_counter() - start_time}


def _read_metrics(path: Path, max_step: int) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if row.get("step", 0) <= max_step:
            rows.append(row)
    return rows


def _write_metrics(path: Path, rows: list[dict]) -> None:
    with atomic_write(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def _append_metrics(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def read_metrics(path: str | Path) -> list[dict]:
    """All rows of a ``metrics.jsonl`` file."""
    return _read_metrics(Path(path), max_step=2**62)
