"""The training loop: short, resumable from any checkpoint, and identical when resumed.

``fit`` knows nothing about pruning: a pruner is a callback whose ``step(step)`` may update masks (and return
a log record) and whose ``state_dict`` rides along in checkpoints.
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
import torch.nn.functional as nnf
from torch import nn

from ..data import DataBundle, iterate_batches, num_batches
from ..errors import PrunekitError
from ..io import atomic_write, torch_load, torch_save
from ..schema import F, validate
from .distributed import DistContext, all_reduce_sum
from .optim import OPTIMIZERS, build_optimizer, cosine_lr, set_lr

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


@dataclass
class TrainConfig:
    """Hyper-parameters of one training (or fine-tuning) stage: the ``train`` section of a run config."""

    epochs: float = F(10, "training epochs", lo=0, hi=10000)
    batch_size: int = F(128, "global batch size", lo=1, hi=1 << 20)
    lr: float = F(0.05, "peak learning rate", lo=0, lo_open=True, hi=100)
    optimizer: str = F("sgd", "sgd (Nesterov momentum) or adamw", choices=OPTIMIZERS)
    momentum: float = F(0.9, "SGD momentum", lo=0, hi=1, hi_open=True)
    nesterov: bool = F(True, "Nesterov momentum")
    weight_decay: float = F(5e-5, "weight decay (not applied to BN and biases)", lo=0, hi=1)
    label_smoothing: float = F(0.1, "label smoothing", lo=0, hi=1, hi_open=True)
    warmup_epochs: float = F(1.0, "linear warm-up epochs before cosine decay", lo=0, hi=10000)
    min_lr: float = F(0.0, "final learning rate", lo=0, hi=100)
    augment: bool = F(True, "training augmentation (what it does: data.augment)")
    amp: bool = F(True, "bf16 autocast on CUDA")
    channels_last: bool = F(True, "channels_last memory format on CUDA")
    compile: bool = F(False, "torch.compile the model")
    sync_bn: bool = F(False, "synchronised BatchNorm under DDP (torch SyncBatchNorm on CUDA, prunekit's all-reduce "
                      "BN on CPU)")
    checkpoint_every: int = F(0, "also checkpoint every N steps (0: each epoch only)", lo=0)
    max_steps: int = F(0, "stop after N steps (0: no limit)", lo=0)
    eval_batch_size: int = F(512, "batch size of the test pass after each epoch", lo=1, hi=1 << 20)
    seed: int = F(0, "seed of the data order and augmentation", lo=0, user=False)
    num_workers: int = F(0, "decoding workers for streamed image folders", lo=0, hi=64, user=False)
    distill: float = F(0.0, "weight of the distillation loss (needs a teacher); 0 = plain cross-entropy", lo=0, hi=1,
                       user=False)
    distill_temperature: float = F(4.0, "distillation temperature", lo=0, lo_open=True, hi=100, user=False)

    def validate(self) -> TrainConfig:
        return validate(self, "train")


class Callback(Protocol):
    """What ``fit`` calls: ``step(step)`` before every training step (a pruner updates its masks there and may
    return a log record), ``state_dict``/``load_state_dict`` with every checkpoint, and optionally
    ``summary()`` for the epoch log."""

    def step(self, step: int) -> dict | None: ...

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
        sums += torch.tensor([c1, c5, float(nnf.cross_entropy(logits, y, reduction="sum")), len(y)], dtype=torch.float64)
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


def _fingerprint(cfg: TrainConfig, data: DataBundle, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """What a checkpoint must have been written with to be resumed: the training config, the augmentation and
    each callback's own fingerprint (a pruner's config and allocation: another allocation must not resume)."""
    d = asdict(cfg)
    for k in ("num_workers", "eval_batch_size", "checkpoint_every", "compile", "max_steps"):
        d.pop(k)
    d["data_augment"] = asdict(data.augment)
    fps = [cb.fingerprint() for cb in callbacks if callable(getattr(cb, "fingerprint", None))]
    if fps:
        d["callbacks"] = fps
    return d


class _Run:
    """The state of one ``fit`` call: where it writes, how far it got, what the checkpoint holds."""

    def __init__(self, model, data, cfg, out, callbacks, ctx, log, desc):
        self.model, self.data, self.cfg, self.out = model, data, cfg, out
        self.callbacks, self.ctx, self.log, self.desc = list(callbacks), ctx, log, desc
        self.device = ctx.device
        self.steps_per_epoch = num_batches(len(data.train), cfg.batch_size, drop_last=True)
        if self.steps_per_epoch == 0:
            raise PrunekitError(f"batch size {cfg.batch_size} is larger than the training set ({len(data.train)} "
                                "images)")
        if self.device.type == "cpu":  # refuse batches that cannot fit before the first step
            from ..memory import check_inference, check_training

            shape = (data.channels, *data.size)
            check_training(model, shape, cfg.batch_size)
            check_inference(model, shape, max(1, min(cfg.eval_batch_size, len(data.test))), "evaluation")
        self.total = int(round(cfg.epochs * self.steps_per_epoch))
        self.stop = min(self.total, cfg.max_steps) if cfg.max_steps else self.total  # the LR schedule stays
        self.warmup = int(round(cfg.warmup_epochs * self.steps_per_epoch))
        self.ckpt = out / CHECKPOINT if out else None
        self.step = 0
        self.n_rows = 0  # rows in metrics.jsonl
        self.optimizer = None

    # -- checkpoints --
    def save(self) -> None:
        if not (self.ckpt and self.ctx.is_main):
            return
        torch_save(self.ckpt, {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                               "step": self.step, "callbacks": [cb.state_dict() for cb in self.callbacks],
                               "rng": _rng_state(), "fingerprint": _fingerprint(self.cfg, self.data, self.callbacks),
                               "metrics_rows": self.n_rows})

    def resume(self) -> int | None:
        """Load the checkpoint (exact resume); returns how many metrics rows it had seen."""
        ck = torch_load(self.ckpt, "checkpoint")
        if not (isinstance(ck, dict) and {"model", "optimizer", "step", "rng", "fingerprint"} <= set(ck)):
            raise PrunekitError(f"{self.ckpt} is not a prunekit training checkpoint; use a new --out directory or "
                                "run without --resume")
        if ck.get("fingerprint") != _fingerprint(self.cfg, self.data, self.callbacks):
            raise PrunekitError(f"{self.ckpt} was written with a different training config; use a new --out "
                                "directory or run without --resume")
        try:  # same training config but another model (e.g. a different --width) or pruning setup
            self.model.load_state_dict(ck["model"])
            self.optimizer.load_state_dict(ck["optimizer"])
            for cb, st in zip(self.callbacks, ck.get("callbacks", []), strict=False):
                cb.load_state_dict(st)
            _set_rng_state(ck["rng"])
            self.step = int(ck["step"])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
            first = (lines[1] if len(lines) > 1 and lines[0].endswith(":") else lines[0])[:200]
            raise PrunekitError(f"{self.ckpt} does not match this model or pruning setup ({first}); use a new "
                                "--out directory or run without --resume") from None
        self.log(f"[{self.desc}] resumed from {self.ckpt} at step {self.step}/{self.total}")
        return ck.get("metrics_rows")

    # -- metrics.jsonl --
    def restore_metrics(self, rows_at_checkpoint: int | None) -> None:
        rows = _read_metrics(self.out / METRICS, max_step=self.step)
        if isinstance(rows_at_checkpoint, int):  # exact: also drops a callback row of the resume step itself,
            # which a killed run may have appended after the checkpoint (and which is written again now)
            rows = _read_metrics(self.out / METRICS, max_step=2**62)[:rows_at_checkpoint]
        _write_metrics(self.out / METRICS, rows)
        self.n_rows = len(rows)

    def append(self, row: dict) -> None:
        if self.out and self.ctx.is_main:
            _append_metrics(self.out / METRICS, row)
            self.n_rows += 1


def _loss(logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor, cfg: TrainConfig,
          teacher: nn.Module | None) -> torch.Tensor:
    """Cross-entropy, blended with distillation from ``teacher`` when ``cfg.distill > 0``."""
    loss = nnf.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
    if cfg.distill > 0:
        with torch.no_grad():
            t_logits = teacher(x).float()
        t = cfg.distill_temperature
        kd = nnf.kl_div(nnf.log_softmax(logits.float() / t, 1), nnf.log_softmax(t_logits / t, 1), reduction="batchmean",
                      log_target=True) * t * t
        loss = (1 - cfg.distill) * loss + cfg.distill * kd
    return loss


def _wrap(model: nn.Module, cfg: TrainConfig, ctx: DistContext) -> tuple[nn.Module, Callable[[], None] | None]:
    """The module that training calls (DDP, synchronised BN, torch.compile) and how to undo the BN swap."""
    train_model, restore_bn = model, None
    if ctx.enabled:
        if cfg.sync_bn:
            from .syncbn import swap_sync_batchnorm

            restore_bn = swap_sync_batchnorm(model, ctx.device)
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None, broadcast_buffers=True)
    if cfg.compile:
        train_model = torch.compile(train_model)
    return train_model, restore_bn


def _gap_warning(row: dict, epoch: int, warned: list[bool], log: Callable[[str], None], epochs: float = 0) -> None:
    """Say so once when the test accuracy stays far below the training accuracy after the first epochs (at least
    3, and a quarter of the run)."""
    if warned[0] or epoch < max(3, 0.25 * epochs) or row["train_top1"] - row["test_top1"] < 30:
        return
    warned[0] = True
    log(f"warning: after {epoch} epochs test top-1 is {row['test_top1']:.1f}% but training top-1 "
        f"{row['train_top1']:.1f}%: with few steps per epoch BatchNorm's running statistics lag behind the weights "
        "early on (this passes as the learning rate decays); if it persists, check data.augment (crop padding, "
        "flips) for these images and that the test images look like the training images")


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
    cfg.validate()
    ctx = ctx or DistContext()
    run = _Run(model, data, cfg, Path(out_dir) if out_dir is not None else None, callbacks, ctx, log, desc)
    model.to(run.device)
    if run.device.type == "cuda" and cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    run.optimizer = build_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum, cfg.nesterov)
    if run.ckpt is not None and ctx.is_main:  # temp files left by a kill during a checkpoint write
        for tmp in run.out.glob(f".{CHECKPOINT}.*.tmp"):
            tmp.unlink(missing_ok=True)
    rows_at_checkpoint = run.resume() if resume and run.ckpt and run.ckpt.exists() else None
    if run.out and ctx.is_main:
        run.restore_metrics(rows_at_checkpoint)
    if run.device.type == "cuda":  # datasets that fit: keep them on the GPU, augment there (no 2-core loader stall)
        data = data.to(run.device)
    if cfg.distill > 0:
        if teacher is None:
            raise PrunekitError("distill > 0 needs a teacher model (e.g. the dense model before pruning)")
        teacher = teacher.to(run.device).eval()
        for p_ in teacher.parameters():
            p_.requires_grad_(False)
    train_model, restore_bn = _wrap(model, cfg, ctx)
    start_time = time.perf_counter()
    last_eval: dict[str, Any] = {}
    warned = [False]
    while run.step < run.stop:
        epoch = run.step // run.steps_per_epoch
        stats = _train_epoch(run, train_model, data, teacher, progress)
        if run.step < min(run.total, (epoch + 1) * run.steps_per_epoch):  # stopped by max_steps: no epoch row
            run.save()
            break
        last_eval = evaluate(model, data, "test", cfg.eval_batch_size, run.device, ctx, cfg.amp)
        all_reduce_sum(stats["sums"])
        n, loss_sum, correct = (float(v) for v in stats["sums"])
        row = {"step": run.step, "epoch": run.step / run.steps_per_epoch, "lr": run.optimizer.param_groups[0]["lr"],
               "train_loss": loss_sum / max(1, n), "train_top1": 100 * correct / max(1, n),
               "test_top1": last_eval["top1"], "test_top5": last_eval["top5"], "test_loss": last_eval["loss"],
               "seconds": stats["seconds"], "img_per_s": n / max(stats["seconds"], 1e-9)}
        for cb in run.callbacks:
            if hasattr(cb, "summary"):
                row.update(cb.summary())
        run.append(row)
        log(f"[{desc}] epoch {row['epoch']:.2f}  loss {row['train_loss']:.4f}  train {row['train_top1']:.2f}%  "
            f"test top-1 {row['test_top1']:.2f}%  top-5 {row['test_top5']:.2f}%  ({row['img_per_s']:.0f} img/s)")
        _gap_warning(row, epoch + 1, warned, log, cfg.epochs)
        run.save()
    if not last_eval:  # resumed after the last step, or zero epochs
        last_eval = evaluate(model, data, "test", cfg.eval_batch_size, run.device, ctx, cfg.amp)
    if restore_bn is not None:
        restore_bn()
    return {"steps": run.step, "total_steps": run.total, "test": last_eval, "seconds": time.perf_counter() - start_time}


def _train_epoch(run: _Run, train_model: nn.Module, data: DataBundle, teacher: nn.Module | None,
                 progress: bool | None) -> dict[str, Any]:
    """Train from ``run.step`` to the end of its epoch (or ``run.stop``); returns the epoch's sums."""
    if progress is False:  # no bar: plain tqdm (tqdm.auto warns in notebooks without ipywidgets)
        from tqdm import tqdm
    else:
        from tqdm.auto import tqdm

    cfg, device, spe = run.cfg, run.device, run.steps_per_epoch
    param_dtype = next(run.model.parameters()).dtype
    epoch, start_batch = divmod(run.step, spe)
    run.model.train()
    lazy = device.type == "cuda"  # GPU: accumulate loss/accuracy on the device, check finiteness every 50 steps
    loss_acc = torch.zeros((), device=device, dtype=torch.float64)
    correct_acc = torch.zeros((), device=device, dtype=torch.int64)
    n_seen, t0 = 0, time.perf_counter()
    batches = iterate_batches(data, "train", cfg.batch_size, train=True, seed=cfg.seed, epoch=epoch,
                              start_batch=start_batch, device=device, rank=run.ctx.rank, world=run.ctx.world,
                              augment=cfg.augment, num_workers=cfg.num_workers)
    epoch_end = min(run.stop, (epoch + 1) * spe)
    bar = tqdm(total=epoch_end - run.step, desc=f"[{run.desc}] epoch {epoch + 1}/{math.ceil(run.total / spe)}",
               disable=True if (not run.ctx.is_main or progress is False) else (None if progress is None else False),
               leave=False, unit="step", mininterval=1.0, dynamic_ncols=True)
    for x, y in batches:
        if run.step >= epoch_end:
            break
        for cb in run.callbacks:
            rec = cb.step(run.step)
            if rec:
                run.append({"step": run.step, "epoch": run.step / spe, **rec})
        set_lr(run.optimizer, cosine_lr(run.step, run.total, cfg.lr, run.warmup, cfg.min_lr))
        if param_dtype == torch.float64:  # double-precision models (exactness checks) get double inputs
            x = x.double()
        if device.type == "cuda" and cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device, cfg.amp):
            logits = train_model(x)
            loss = _loss(logits, y, x, cfg, teacher)
        if not lazy and not torch.isfinite(loss):
            raise PrunekitError(f"training diverged at step {run.step} (loss={loss.item()}); lower --lr")
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        run.step += 1
        n_seen += len(y)
        if lazy:  # no host sync per step: the GPU runs ahead of Python
            loss_acc += loss.detach().double() * len(y)
            correct_acc += (logits.detach().argmax(1) == y).sum()
            if run.step % 50 == 0 and not bool(torch.isfinite(loss_acc)):
                raise PrunekitError(f"training diverged by step {run.step} (non-finite loss); lower --lr")
        else:
            loss_acc += float(loss.detach()) * len(y)
            correct_acc += int((logits.detach().argmax(1) == y).sum())
        bar.update(1)
        if bar.n % 50 == 0 and not bar.disable:
            bar.set_postfix(loss=f"{float(loss_acc) / n_seen:.3f}", acc=f"{100 * int(correct_acc) / n_seen:.1f}")
        if cfg.checkpoint_every and run.step % cfg.checkpoint_every == 0 and run.step < epoch_end:
            run.save()
    bar.close()
    loss_sum, correct = float(loss_acc), int(correct_acc)
    if lazy and not math.isfinite(loss_sum):
        raise PrunekitError(f"training diverged by step {run.step} (non-finite loss); lower --lr")
    return {"sums": torch.tensor([n_seen, loss_sum, correct], dtype=torch.float64),
            "seconds": time.perf_counter() - t0}


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
