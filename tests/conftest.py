"""Shared fixtures: small real models trained on the bundled Fashion-MNIST subset (session-scoped, built once)."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("PRUNEKIT_TEST", "1")

# Property tests draw the same examples on every run and machine (a fresh clone once failed on an unlucky draw of
# random networks); PRUNEKIT_HYPOTHESIS=explore draws new ones each run, to look for bugs on purpose.
from hypothesis import settings as _hypothesis  # noqa: E402

_hypothesis.register_profile("fixed", derandomize=True, database=None)
_hypothesis.register_profile("explore")
_hypothesis.load_profile("explore" if os.environ.get("PRUNEKIT_HYPOTHESIS") == "explore" else "fixed")
# pytest-xdist runs one worker per core (make test: 2): two threads in each worker would make 4 spin-waiting
# threads on 2 cores; alone, a process may use two
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, os.cpu_count() or 1)))
if os.environ.get("PYTEST_XDIST_WORKER"):
    # ... and so does every process a test starts (CLI subprocesses, the notebook's kernel) unless it says otherwise:
    # a child with two threads beside the other worker ran a test 4x slower than alone (81 s vs 19 s)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: on a shared 2-core machine, small models run much faster with one
    thread than with two spin-waiting ones. Modules opt in with ``pytestmark = pytest.mark.usefixtures(...)``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def run_cli(*args: str) -> tuple[int, str, str]:
    """Run ``prunekit ARGS`` in-process; returns (exit code, stdout, stderr)."""
    from prunekit.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:  # argparse
            rc = int(e.code or 0)
    return rc, out.getvalue(), err.getvalue()


def run_cli_subprocess(*args: str, cwd: str | Path | None = None, timeout: float = 600,
                       env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m prunekit ARGS`` in a subprocess (exit codes, no-traceback checks, kills)."""
    e = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "prunekit", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env=e)


@contextlib.contextmanager
def read_only_dir(path: Path):
    """``path`` (created) made unwritable for this process, also when the tests run as root (as CI does), which
    ignores permission bits: then it is made immutable (``chattr +i``) or bind-mounted read-only onto itself.
    Yields how; fails (never skips silently) when no method works."""
    import shutil
    import tempfile

    path.mkdir(parents=True, exist_ok=True)
    undo, how = None, None
    if os.geteuid() != 0:
        path.chmod(0o555)
        undo, how = (lambda: path.chmod(0o755)), "chmod 555"
    else:
        for cmd, off, label in ((["chattr", "+i"], ["chattr", "-i"], "chattr +i"),
                                (["mount", "--bind", "-o", "ro"], ["umount"], "read-only bind mount")):
            if shutil.which(cmd[0]) is None:
                continue
            args = [*cmd, str(path)] + ([str(path)] if cmd[0] == "mount" else [])
            if subprocess.run(args, capture_output=True).returncode == 0:
                undo, how = (lambda off=off: subprocess.run([*off, str(path)], capture_output=True)), label
                break
    try:
        try:
            fd, tmp = tempfile.mkstemp(dir=path)
            os.close(fd)
            os.unlink(tmp)
            writable = True
        except OSError:
            writable = False
        if writable:
            pytest.fail(f"could not make {path} read-only for this process (tried: chmod / chattr / bind mount)")
        yield how
    finally:
        if undo is not None:
            undo()


@pytest.fixture(scope="session")
def bundled():
    from prunekit.data import load_data

    return load_data("bundled")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """MobileNet V1 alpha=0.25 trained 3 epochs on the bundled subset (~70% top-1), saved as a model directory."""
    out = tmp_path_factory.mktemp("tiny_train")
    rc, so, se = run_cli("train", "--data", "bundled", "--width", "0.25", "--epochs", "3", "--batch-size", "64",
                         "--lr", "0.1", "--out", out, "--device", "cpu")
    assert rc == 0, se
    return out / "model"


@pytest.fixture(scope="session")
def _fp32_export(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model exported once per session (the default exporter: 5-8 s of dynamo tracing)."""
    out = tmp_path_factory.mktemp("fp32_export") / "m.onnx"
    rc, so, se = run_cli("export", "--model", tiny_model_dir, "--out", out)
    assert rc == 0, se
    return out


@pytest.fixture(scope="module")
def fp32_model(_fp32_export, tmp_path_factory) -> Path:
    """The tiny model exported to fp32 ONNX (``m.onnx``), a copy per test module (modules write files beside it)."""
    import shutil

    out = tmp_path_factory.mktemp("fp32_model") / "m.onnx"
    for f in _fp32_export.parent.iterdir():  # the model and whatever the export wrote beside it
        shutil.copy2(f, out.parent / f.name)
    return out


@pytest.fixture(scope="session")
def pruned_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model pruned to 50% of pointwise channels (gradual, 1 epoch), saved with its masks."""
    out = tmp_path_factory.mktemp("tiny_prune")
    rc, so, se = run_cli("prune", "--model", tiny_model_dir, "--data", "bundled", "--final-sparsity", "0.5",
                         "--epochs", "1", "--round-to", "4", "--out", out, "--device", "cpu")
    assert rc == 0, se
    return out / "model"


@pytest.fixture(scope="session")
def shrunk_model_dir(pruned_model_dir, tmp_path_factory) -> Path:
    """The pruned model after surgery (physically smaller)."""
    out = tmp_path_factory.mktemp("tiny_shrunk") / "model"
    rc, so, se = run_cli("surgery", "--model", pruned_model_dir, "--out", out)
    assert rc == 0, se
    return out


@pytest.fixture
def address_space_cap():
    """Cap this process's address space at its current size + 3 GiB for one test (soft RLIMIT_AS, restored
    after): a test of a memory check that regresses then fails with an allocation error instead of letting the
    machine's OOM killer pick a victim."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + (3 << 30), hard))
    yield
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
