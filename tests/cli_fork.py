"""Many `python -m prunekit ARGS` processes without paying for `import torch` in each (~2 s of CPU apiece).

``run_many`` starts one server process (this file as a script) that imports torch and prunekit once, then forks
one child per command: the child sets ``sys.argv``, runs the ``prunekit.__main__`` module as
``python -m prunekit`` would (an uncaught exception prints its traceback and exits 1) with its stdout and stderr
redirected at the file-descriptor level (what C++ libraries print is seen too), and exits. No state passes from
one command to the next, and the server has run nothing but imports when it forks, so no thread pool exists yet.
``Server`` keeps one such server for commands that depend on each other (run, kill, resume), one at a time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path


def _child(args: list[str], env: dict[str, str | None], out: str, err: str, limit_as: int | None = None,
           script: str | None = None) -> None:
    """In the forked child: run one command and exit with its code (never returns). ``limit_as``: an
    address-space limit (``RLIMIT_AS``, bytes) for the command; ``script``: run this Python file with ``args`` as
    its arguments (as ``python SCRIPT ARGS`` would) instead of ``python -m prunekit ARGS``."""
    import runpy
    import traceback

    code = 1
    try:
        if limit_as:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (limit_as, limit_as))
        for k, v in env.items():  # None: unset
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if "OMP_NUM_THREADS" in env:  # a fresh interpreter reads it when importing torch; the server imported it
            import torch

            torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
        for fd, path in ((1, out), (2, err)):
            f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(f, fd)
            os.close(f)
        sys.argv = [script or "prunekit", *args]
        try:
            if script:
                runpy.run_path(script, run_name="__main__")
            else:
                runpy.run_module("prunekit", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:  # what the interpreter makes of sys.exit(code)
            if e.code is None or isinstance(e.code, int):
                code = e.code or 0
            else:
                print(e.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _read(f: Path) -> str:
    """A child's captured output; absent when it died before redirecting."""
    return f.read_text(errors="replace") if f.is_file() else ""


def _serve(jobs: list[dict], workers: int, timeout: float, tmp: str) -> list[dict]:
    """In the server: fork a child per job, ``workers`` alive at a time; a child over ``timeout`` is killed."""
    results: list[dict | None] = [None] * len(jobs)
    killed: set[int] = set()
    alive: dict[int, tuple[int, float]] = {}  # pid -> (job index, start time)
    todo = list(range(len(jobs)))
    while todo or alive:
        while todo and len(alive) < workers:
            i = todo.pop(0)
            out, err = os.path.join(tmp, f"{i}.out"), os.path.join(tmp, f"{i}.err")
            os.chdir(jobs[i]["cwd"])
            pid = os.fork()
            if pid == 0:
                _child(jobs[i]["args"], jobs[i]["env"], out, err, jobs[i].get("limit_as"), jobs[i].get("script"))
            alive[pid] = (i, time.monotonic())
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            for p, (_, t0) in list(alive.items()):
                if time.monotonic() - t0 > timeout and p not in killed:
                    os.kill(p, 9)
                    killed.add(p)
            time.sleep(0.005)
            continue
        i, t0 = alive.pop(pid)
        rc = os.waitstatus_to_exitcode(status)
        results[i] = {"rc": rc, "stdout": _read(Path(tmp, f"{i}.out")), "stderr": _read(Path(tmp, f"{i}.err")),
                      "timed_out": pid in killed, "seconds": time.monotonic() - t0}
    return results  # type: ignore[return-value]


def run_many(commands: Sequence[Sequence[object]], cwd: str | Path | Sequence[str | Path],
             env: dict[str, str | None] | None = None, workers: int = 3, timeout: float = 300,
             limit_as: int | None = None) -> list[subprocess.CompletedProcess]:
    """Run each ``prunekit`` command line in its own process, ``workers`` at a time; results in order. ``cwd``:
    one directory for all, or one per command; ``env``: variables set (None: unset) in each; ``limit_as``: each
    command's address-space limit in bytes. A command killed after ``timeout`` seconds has return code -9 and
    ``timed_out`` True (False on the others); ``seconds`` is each command's wall time."""
    import tempfile

    todo = [[str(a) for a in c] for c in commands]
    cwds = [str(cwd)] * len(todo) if isinstance(cwd, (str, Path)) else [str(c) for c in cwd]
    if len(cwds) != len(todo):
        raise ValueError("one cwd per command")
    with tempfile.TemporaryDirectory() as tmp:
        req = {"jobs": [{"args": c, "cwd": d, "env": dict(env or {}), "limit_as": limit_as}
                        for c, d in zip(todo, cwds, strict=True)],
               "workers": workers, "timeout": timeout, "tmp": tmp}
        r = subprocess.run([sys.executable, __file__], input=json.dumps(req), capture_output=True, text=True,
                           timeout=timeout * len(todo) + 120)
        if r.returncode != 0:
            raise RuntimeError(f"cli_fork server failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
        done = json.loads(r.stdout)
    results = []
    for c, d in zip(todo, done, strict=True):
        r = subprocess.CompletedProcess([sys.executable, "-m", "prunekit", *c], d["rc"], d["stdout"], d["stderr"])
        r.timed_out, r.seconds = d["timed_out"], d["seconds"]  # type: ignore[attr-defined]
        results.append(r)
    return results


class Server:
    """One server for commands that must run one after another (a run, then its ``--resume``): each
    :meth:`run` forks a fresh child from the same server, which imported torch and prunekit once. Use as a
    context manager (or call :meth:`close`)."""

    def __init__(self, env: dict[str, str | None] | None = None):
        import tempfile

        self.env = dict(env or {})
        self._tmp = tempfile.TemporaryDirectory()
        self._proc = subprocess.Popen([sys.executable, __file__, "--serve", self._tmp.name], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def run(self, args: Sequence[object], cwd: str | Path = ".", script: str | Path | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
        """``args`` as ``python -m prunekit ARGS`` (or ``python SCRIPT ARGS``) would run them, in a forked child;
        a child over ``timeout`` seconds is killed (return code -9, ``timed_out`` True)."""
        job = {"args": [str(a) for a in args], "cwd": str(Path(cwd).resolve()), "env": self.env,
               "script": str(script) if script else None, "timeout": timeout}
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(json.dumps(job) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"cli_fork server died (exit {self._proc.wait()})")
        d = json.loads(line)
        head = [sys.executable, str(script)] if script else [sys.executable, "-m", "prunekit"]
        r = subprocess.CompletedProcess([*head, *job["args"]], d["rc"], d["stdout"], d["stderr"])
        r.timed_out, r.seconds = d["timed_out"], d["seconds"]  # type: ignore[attr-defined]
        return r

    def close(self) -> None:
        if self._proc.poll() is None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._tmp.cleanup()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    serve = sys.argv[1:2] == ["--serve"]
    request = None if serve else json.loads(sys.stdin.read())
    import torch  # noqa: F401  (what every command would import: once, here)

    import prunekit.cli  # noqa: F401
    import prunekit.steps  # noqa: F401

    if serve:  # one job per line on stdin, one result per line on stdout, until stdin closes
        for job_line in sys.stdin:
            job = json.loads(job_line)
            print(json.dumps(_serve([job], 1, job["timeout"], sys.argv[2])[0]), flush=True)
    else:
        print(json.dumps(_serve(request["jobs"], request["workers"], request["timeout"], request["tmp"])))
