"""Kill-safe resume: SIGKILL `prunekit train` / `prunekit prune` at many points, `--resume`, and get exactly the
weights (and masks) of an uninterrupted run, byte for byte (CPU, one thread, deterministic).

Kill points come from a seeded RNG and are part of the test ids:

* ``step``: SIGKILL at the start of the n-th optimisation step (mid-epoch, between checkpoints);
* ``tmp-written``: SIGKILL inside ``prunekit.io.atomic_write`` after the n-th ``checkpoint.pt`` (or the final
  ``model.json`` / ``masks.safetensors``) was fully written to its temporary file, before the rename;
* ``half-written``: SIGKILL in the middle of writing the n-th checkpoint's temporary file;
* ``signal``: the test itself sends SIGKILL a random delay after the k-th epoch line (anywhere: training,
  evaluation, a checkpoint write).

The in-process kills come from a small worker script that wraps ``torch.save`` / ``os.replace`` /
``trainer.set_lr`` in the child process only, then runs the real CLI (``prunekit.cli.main``). The library has
no test hooks. Runs are tiny (synthetic 16x16 images, MobileNet V1 x0.25, batch 32: 16 steps per epoch).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
STEPS_PER_EPOCH = 16  # synthetic: 512 training images / batch 32
TRAIN_EPOCHS, PRUNE_EPOCHS = 3, 2
TRAIN_EVERY, PRUNE_EVERY = 5, 4  # checkpoint_every (prune: added by the worker to the killed run only)
TRAIN_ARGS = ["train", "--data", "synthetic", "--image-size", "16", "--width", "0.25", "--epochs", str(TRAIN_EPOCHS),
              "--batch-size", "32", "--lr", "0.05", "--device", "cpu", "--set", f"train.checkpoint_every={TRAIN_EVERY}"]


def prune_args(model: Path) -> list[str]:
    return ["prune", "--model", str(model), "--data", "synthetic", "--epochs", str(PRUNE_EPOCHS), "--batch-size", "32",
            "--final-sparsity", "0.5", "--end-epoch", "1.5", "--device", "cpu"]


def checkpoint_steps(epochs: int, every: int) -> list[int]:
    """The steps at which fit() writes checkpoint.pt: every `every` steps inside an epoch, and at its end."""
    total = epochs * STEPS_PER_EPOCH
    steps = set(range(STEPS_PER_EPOCH, total + 1, STEPS_PER_EPOCH))
    steps |= {s for s in range(every, total, every) if s % STEPS_PER_EPOCH}
    return sorted(steps)


WORKER = r'''
import io, json, os, signal, sys

spec = json.loads(sys.argv[1])


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def target(path):
    return os.path.basename(str(path)) == spec.get("name")


argv = sys.argv[2:]
if spec.get("checkpoint_every"):  # more checkpoints in the killed run; results do not depend on it
    argv += ["--set", f"train.checkpoint_every={spec['checkpoint_every']}"]

kind, count = spec["kind"], [0]
if kind == "step":  # at the start of the n-th optimisation step
    import prunekit.train.trainer as tr

    real_set_lr = tr.set_lr

    def set_lr(*a, **k):
        count[0] += 1
        if count[0] == spec["n"]:
            die()
        return real_set_lr(*a, **k)

    tr.set_lr = set_lr
elif kind == "tmp-written":  # the temporary file is complete and fsynced; the rename has not happened
    real_replace = os.replace

    def replace(src, dst, *a, **k):
        if target(dst):
            count[0] += 1
            if count[0] == spec["n"]:
                assert os.path.basename(str(src)).startswith("." + spec["name"] + ".")
                die()
        return real_replace(src, dst, *a, **k)

    os.replace = replace
elif kind == "half-written":  # half of the checkpoint's bytes are in the temporary file
    import torch

    real_save = torch.save

    def save(obj, f, *a, **k):
        name = os.readlink(f"/proc/self/fd/{f.fileno()}") if hasattr(f, "fileno") else str(f)
        if os.path.basename(name).startswith("." + spec["name"] + "."):
            count[0] += 1
            if count[0] == spec["n"]:
                buf = io.BytesIO()
                real_save(obj, buf, *a, **k)
                f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                f.flush()
                os.fsync(f.fileno())
                die()
        return real_save(obj, f, *a, **k)

    torch.save = save

from prunekit.cli import main

sys.exit(main(argv))
'''


def run(server, args: list, timeout: float = 300) -> subprocess.CompletedProcess:
    r = server.run(args, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def run_killed(server, worker: Path, spec: dict, args: list) -> subprocess.CompletedProcess:
    r = server.run([json.dumps(spec), *args], script=worker)
    assert r.returncode == -signal.SIGKILL, f"not killed (exit {r.returncode}): {r.stderr[-2000:]}"
    return r


def run_signalled(args: list, after_lines: int, delay: float) -> None:
    """Start the real CLI, wait for its `after_lines`-th epoch line, sleep `delay` seconds, SIGKILL it."""
    p = subprocess.Popen([sys.executable, "-m", "prunekit", *map(str, args)], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, env=ENV)
    seen = []
    try:
        for line in p.stdout:
            seen.append(line)
            if "] epoch " in line and sum("] epoch " in s for s in seen) == after_lines:
                time.sleep(delay)
                p.send_signal(signal.SIGKILL)
                break
        p.wait(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()
    assert p.returncode == -signal.SIGKILL, "finished before the kill:\n" + "".join(seen[-5:])


def read_checkpoint_step(out: Path) -> int | None:
    from prunekit.io import torch_load

    ck = out / "checkpoint.pt"
    return int(torch_load(ck)["step"]) if ck.exists() else None  # torch_load fails loudly on a partial file


def epoch_rows(out: Path) -> list[dict]:
    """Test metrics per epoch and the pruning records (train loss/throughput depend on where a run resumed)."""
    rows = []
    for line in (out / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        rows.append({k: v for k, v in r.items() if k not in ("seconds", "img_per_s", "train_loss", "train_top1")})
    return rows


def assert_identical(out: Path, ref: Path, files: tuple[str, ...]) -> None:
    from safetensors.torch import load_file

    for name in files:
        a, b = load_file(str(out / "model" / name)), load_file(str(ref / "model" / name))
        assert a.keys() == b.keys(), name
        diff = [k for k in a if not torch.equal(a[k], b[k])]
        assert not diff, f"{name}: {len(diff)} tensors differ from the uninterrupted run, e.g. {diff[:3]}"
        assert (out / "model" / name).read_bytes() == (ref / "model" / name).read_bytes(), name  # byte for byte
    assert json.loads((out / "model" / "model.json").read_text()) == json.loads((ref / "model" / "model.json").read_text())
    assert epoch_rows(out) == epoch_rows(ref)  # one row per epoch / pruning step, none repeated or lost


# --- kill points (seeded, in the test ids) -------------------------------------------------------------

rng = random.Random(20250610)
TRAIN_CKPTS = checkpoint_steps(TRAIN_EPOCHS, TRAIN_EVERY)  # [5, 10, 15, 16, 20, ...]
PRUNE_CKPTS = checkpoint_steps(PRUNE_EPOCHS, PRUNE_EVERY)
TRAIN_TOTAL, PRUNE_TOTAL = TRAIN_EPOCHS * STEPS_PER_EPOCH, PRUNE_EPOCHS * STEPS_PER_EPOCH

TRAIN_POINTS = [
    {"kind": "step", "n": rng.randint(2, STEPS_PER_EPOCH)},  # epoch 1 (maybe before any checkpoint)
    {"kind": "step", "n": rng.randint(STEPS_PER_EPOCH + 2, TRAIN_TOTAL)},  # later epochs
    {"kind": "tmp-written", "name": "checkpoint.pt", "n": rng.randint(2, len(TRAIN_CKPTS) - 1)},
    {"kind": "half-written", "name": "checkpoint.pt", "n": rng.randint(1, len(TRAIN_CKPTS) - 1)},
    {"kind": "tmp-written", "name": "model.json", "n": 1},  # after the last checkpoint, saving the model
    {"kind": "signal", "after": rng.randint(1, TRAIN_EPOCHS - 1), "delay": round(rng.uniform(0.0, 0.4), 2)},
]
PRUNE_POINTS = [
    {"kind": "step", "n": rng.randint(2, 24), "checkpoint_every": PRUNE_EVERY},  # while masks change
    {"kind": "tmp-written", "name": "checkpoint.pt", "n": rng.randint(2, len(PRUNE_CKPTS) - 1),
     "checkpoint_every": PRUNE_EVERY},
    {"kind": "half-written", "name": "checkpoint.pt", "n": rng.randint(1, 2)},  # epoch-end checkpoints only
    {"kind": "tmp-written", "name": "masks.safetensors", "n": 1},  # the first file of the final save
    {"kind": "signal", "after": 1, "delay": round(rng.uniform(0.0, 0.3), 2)},
]


def _id(p: dict) -> str:
    if p["kind"] == "signal":
        return f"signal-after-epoch-line-{p['after']}+{p['delay']}s"
    if p["kind"] == "step":
        return f"step-n{p['n']}"
    return f"{p['kind']}-{p['name']}-n{p['n']}"


@pytest.fixture(scope="module")
def server():
    """Every command but the signalled ones runs in a child forked from one server that imported torch and
    prunekit once (``cli_fork.Server``: ~2 s of CPU less per command; the kills hit the child alone)."""
    from cli_fork import Server

    with Server(env={"OMP_NUM_THREADS": "1"}) as s:
        yield s


@pytest.fixture(scope="module")
def worker(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("kill_worker") / "kill_worker.py"
    path.write_text(WORKER)
    return path


@pytest.fixture(scope="module")
def train_ref(server, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("kill_ref") / "train"
    run(server, [*TRAIN_ARGS, "--out", out])
    return out


@pytest.fixture(scope="module")
def prune_ref(server, train_ref, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("kill_ref") / "prune"
    run(server, [*prune_args(train_ref / "model"), "--out", out])
    return out


def check_after_kill(out: Path, point: dict, ckpt_steps: list[int]) -> None:
    """What a kill may leave: checkpoint.pt is complete (an earlier one) or absent; only temp files are partial."""
    step = read_checkpoint_step(out)
    leftovers = sorted(p.name for p in out.glob(".checkpoint.pt.*.tmp"))
    if point["kind"] == "step":
        done = point["n"] - 1  # optimisation steps finished before the n-th one started
        expected = max([s for s in ckpt_steps if s <= done], default=None)
        assert step == expected, (step, expected)
    elif point.get("name") == "checkpoint.pt":
        n = point["n"]
        assert step == (ckpt_steps[n - 2] if n >= 2 else None), (step, n)  # the previous, complete checkpoint
        assert len(leftovers) == 1, leftovers  # the one being written, never renamed
        if point["kind"] == "half-written":
            with pytest.raises(Exception):  # noqa: B017 - really is partial
                torch.load(out / leftovers[0], weights_only=True)
    elif point.get("name") in ("model.json", "masks.safetensors"):
        assert step == ckpt_steps[-1]  # training had finished
        assert list((out / "model").glob(f".{point['name']}.*.tmp"))
        assert not (out / "model" / "model.json").exists()


@pytest.mark.parametrize("point", TRAIN_POINTS, ids=[_id(p) for p in TRAIN_POINTS])
def test_train_killed_then_resumed_is_bit_identical(point, server, worker, train_ref, tmp_path):
    out = tmp_path / "run"
    args = [*TRAIN_ARGS, "--out", out]
    if point["kind"] == "signal":
        run_signalled(args, point["after"], point["delay"])
    else:
        run_killed(server, worker, point, args)
        check_after_kill(out, point, TRAIN_CKPTS)
    assert not (out / "model" / "model.json").exists() or point["kind"] == "signal"
    had_checkpoint = (out / "checkpoint.pt").exists()
    r = run(server, [*args, "--resume"])
    assert ("resumed from" in r.stdout) == had_checkpoint  # else it starts over, which is also exact
    assert_identical(out, train_ref, ("model.safetensors",))


@pytest.mark.parametrize("point", PRUNE_POINTS, ids=[_id(p) for p in PRUNE_POINTS])
def test_prune_killed_then_resumed_is_bit_identical(point, server, worker, train_ref, prune_ref, tmp_path):
    out = tmp_path / "run"
    args = [*prune_args(train_ref / "model"), "--out", out]
    if point["kind"] == "signal":
        run_signalled(args, point["after"], point["delay"])
    else:
        run_killed(server, worker, point, args)
        every = point.get("checkpoint_every")
        check_after_kill(out, point, checkpoint_steps(PRUNE_EPOCHS, every) if every else
                         checkpoint_steps(PRUNE_EPOCHS, STEPS_PER_EPOCH))
    had_checkpoint = (out / "checkpoint.pt").exists()
    r = run(server, [*args, "--resume"])
    assert ("resumed from" in r.stdout) == had_checkpoint  # else it starts over, which is also exact
    assert_identical(out, prune_ref, ("model.safetensors", "masks.safetensors"))
    assert json.loads((out / "summary.json").read_text()) == json.loads((prune_ref / "summary.json").read_text())


def test_kill_points_cover_the_brief():
    points = TRAIN_POINTS + PRUNE_POINTS
    assert len({_id(p) for p in points}) == len(points) >= 5
    assert any(p["kind"] in ("tmp-written", "half-written") and p["name"] == "checkpoint.pt" for p in TRAIN_POINTS)
    assert any(p["kind"] in ("tmp-written", "half-written") and p["name"] == "checkpoint.pt" for p in PRUNE_POINTS)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_train_killed_twice_at_random_steps(seed, server, worker, train_ref, tmp_path):
    """Heavier: two kills in a row at random steps (the second one in the resumed run), then a final resume."""
    r = random.Random(seed)
    out = tmp_path / "run"
    args = [*TRAIN_ARGS, "--out", out]
    first = r.randint(2, TRAIN_TOTAL - STEPS_PER_EPOCH)
    run_killed(server, worker, {"kind": "step", "n": first}, args)
    run_killed(server, worker, {"kind": "step", "n": r.randint(2, 10)}, [*args, "--resume"])
    run(server, [*args, "--resume"])
    assert_identical(out, train_ref, ("model.safetensors",))
    shutil.rmtree(out)
