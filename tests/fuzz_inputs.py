"""Mutation fuzzing of the files prunekit reads: ``model.json``, deployment metadata (the ``.onnx.json`` sidecar
and the JSON embedded in an ONNX file) and run configs (YAML). Used by ``tests/test_fuzz_inputs.py`` and
``benchmarks/fuzz_model_files.py``.

A mutation replaces one value of a valid document (every key path is a candidate) by a value of another type,
a huge, negative or non-finite number, a very long string or a deeply nested list; or deletes the key, or adds
an unknown sibling key. Each mutated file is handed to a command that reads it, in a fresh process under an
address-space limit (``RLIMIT_AS``) and a time limit. The contract: exit 0, or exit 2 with exactly one line on
stderr (``prunekit CMD: error: ...``) and no traceback.
"""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
# torch needs ~3.5 GB of address space to import (4 GB runs `eval`); 6 GB leaves room for real work and still
# catches the allocations of issue 21 (32 GB for a 10^9-channel layer, 29 TB for a 60000x60000 input).
MEMORY_LIMIT = 6 << 30
TIME_LIMIT = 180.0
RAW = "__FUZZ_RAW__"  # placeholder replaced by raw text after serialisation (nesting too deep for dumpers)
MISSING = object()

KINDS: dict[str, Any] = {
    # wrong types
    "string": "fuzz", "null": None, "bool": True, "int": 7, "float": 0.5, "list": [1, 2, 3], "dict": {"fuzz": 1},
    "empty-list": [], "empty-dict": {}, "empty-string": "",
    # numbers out of range
    "zero": 0, "negative": -1, "huge": 10**9, "int64-overflow": 2**63, "neg-huge": -(10**18),
    "float-huge": 1e308, "nan": float("nan"), "inf": float("inf"),
    # size and structure
    "long-string": "x" * 100_000, "deep": None, "very-deep": None, "missing": MISSING, "extra-key": None,
}
CONFIG_ONLY_KINDS = {"alias-bomb": None}


def _deep(levels: int) -> list:
    v: list = [1]
    for _ in range(levels):
        v = [v]
    return v


def raw_value(kind: str, fmt: str) -> str | None:
    """Raw document text for kinds that dumpers cannot write (or would expand)."""
    if kind == "very-deep":
        return "[" * 5000 + "]" * 5000
    if kind == "alias-bomb" and fmt == "yaml":  # 9^9 list items once expanded, a few hundred bytes as text
        levels = ["&l0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
        for i in range(1, 9):
            levels.append(f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
        return "[" + ", ".join(levels) + "]"
    return None


@dataclass(frozen=True)
class Mutation:
    target: str  # model.json | sidecar | embedded | config
    path: tuple  # key path; () is the whole document
    kind: str

    @property
    def id(self) -> str:
        return f"{self.target}:{'.'.join(map(str, self.path)) or '<root>'}:{self.kind}"


def key_paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path of a JSON-like document (lists: their first and last item)."""
    out = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.append((*prefix, k))
            out += key_paths(v, (*prefix, k))
    elif isinstance(doc, list) and doc:
        for i in sorted({0, len(doc) - 1}):
            out.append((*prefix, i))
            out += key_paths(doc[i], (*prefix, i))
    return out


def mutations(target: str, doc: Any) -> list[Mutation]:
    """All mutations of one document (the root only gets the type changes)."""
    kinds = list(KINDS) + (list(CONFIG_ONLY_KINDS) if target == "config" else [])
    out = [Mutation(target, (), k) for k in ("string", "null", "list", "empty-dict", "very-deep")]
    for path in key_paths(doc):
        out += [Mutation(target, path, k) for k in kinds]
    return out


def apply(doc: Any, m: Mutation, fmt: str) -> str:
    """The mutated document as text (``fmt``: json or yaml)."""
    doc = json.loads(json.dumps(doc))  # deep copy
    raw = raw_value(m.kind, fmt)
    value = RAW if raw is not None else _deep(40) if m.kind == "deep" else KINDS.get(m.kind)
    if not m.path:
        doc = value
    else:
        parent = doc
        for k in m.path[:-1]:
            parent = parent[k]
        last = m.path[-1]
        if m.kind == "missing":
            del parent[last]
        elif m.kind == "extra-key":
            if isinstance(parent, dict):
                parent["fuzz_extra"] = 1
            else:
                parent.append({"fuzz_extra": 1})
        else:
            parent[last] = value
    if fmt == "json":
        text = json.dumps(doc)  # NaN / Infinity as Python's json writes them
        return text.replace(json.dumps(RAW), raw) if raw is not None else text
    text = yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=10**9)
    return text.replace(RAW, raw) if raw is not None else text


def pick(all_mutations: Sequence[Mutation], n: int, seed: int = 0) -> list[Mutation]:
    """``n`` mutations spread over targets and kinds: targets take turns, each walking one shuffled list of kinds
    from its own offset (so a small sample still covers most kinds); paths are drawn at random with ``seed``."""
    rng = random.Random(seed)
    by: dict[tuple[str, str], list[Mutation]] = {}
    for m in all_mutations:
        by.setdefault((m.target, m.kind), []).append(m)
    for lst in by.values():
        rng.shuffle(lst)
    targets = sorted({m.target for m in all_mutations})
    kinds = sorted({m.kind for m in all_mutations})
    rng.shuffle(kinds)
    step = -(-len(kinds) // len(targets))
    out: list[Mutation] = []
    pos = {t: i * step for i, t in enumerate(targets)}
    while len(out) < n and any(by.values()):
        for t in targets:
            for _ in range(len(kinds)):  # the next kind this target still has mutations of
                k = kinds[pos[t] % len(kinds)]
                pos[t] += 1
                if by.get((t, k)):
                    if len(out) < n:
                        out.append(by[(t, k)].pop())
                    break
    return out


# --- the world: valid files to mutate ----------------------------------------------------------------


@dataclass
class World:
    root: Path
    model: Path  # a model directory saved with pruning masks (extra.pruning + masks.safetensors)
    onnx_embedded: Path  # an ONNX file with prunekit metadata in metadata_props
    onnx_sidecar: Path  # the same graph without embedded metadata: only its sidecar describes it
    config: Path  # a tiny run config (one training step per stage)
    image: Path
    docs: dict[str, Any] = field(default_factory=dict)  # target -> valid document


BASE_CONFIG = {
    "version": 1, "out": "runs/fuzz", "seed": 0, "device": "cpu",
    "model": {"arch": "mobilenet_v1", "width": 0.25, "small_input": True, "dropout": 0.2, "kwargs": {}},
    "data": {"name": "bundled", "image_size": 28, "channels": 1, "num_workers": 0},
    "train": {"epochs": 1, "batch_size": 64, "lr": 0.05, "max_steps": 1, "warmup_epochs": 0.0,
              "checkpoint_every": 0, "augment": False},
    "prune": {"enabled": True, "epochs": 0.05, "final_sparsity": 0.5, "criterion": "l1", "round_to": 1,
              "schedule": {"kind": "one_shot", "begin_step": 0}},
    "finetune": {"enabled": True, "epochs": 0.02},
    "export": {"formats": ["onnx"], "opset": 18},
    "quantize": {"enabled": False, "calib_samples": 32},
    "predict": {"topk": 3},
    "bench": {"enabled": False, "repeats": 3, "threads": 1},
}


def build_world(root: Path) -> World:
    """Valid inputs, built through the library (an untrained MobileNet V1 0.25 with one-shot masks)."""
    import onnx
    import torch
    from PIL import Image

    from prunekit.config import ModelCfg
    from prunekit.data import load_data
    from prunekit.deploy import export_model
    from prunekit.deploy.metadata import sha256_file, sidecar_doc, sidecar_path
    from prunekit.io import write_json
    from prunekit.pruning import OneShot, PruningConfig, prune_
    from prunekit.saved import save
    from prunekit.steps import build_model

    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    data = load_data("bundled")
    model, spec = build_model(ModelCfg(width=0.25), data)
    pruner = prune_(model, PruningConfig(schedule=OneShot(0.5)), (1, 28, 28))
    pruner.step(0)
    save(model, root / "model", spec)
    plain, _ = build_model(ModelCfg(width=0.25), data)
    save(plain, root / "plain", spec)
    from prunekit.saved import load

    export_model(load(root / "plain"), "onnx", root / "embedded.onnx", exporter="legacy")
    proto = onnx.load(str(root / "embedded.onnx"))
    meta_text = next(p.value for p in proto.metadata_props if p.key == "prunekit")
    del proto.metadata_props[:]
    data_bytes = proto.SerializeToString()
    (root / "sidecar.onnx").write_bytes(data_bytes)
    from prunekit.deploy.metadata import DeployMeta

    meta = DeployMeta.from_json(meta_text, "fixture")
    write_json(sidecar_path(root / "sidecar.onnx"), sidecar_doc(meta, data_bytes, root / "sidecar.onnx"))
    assert json.loads(sidecar_path(root / "sidecar.onnx").read_text())["sha256"] == sha256_file(root / "sidecar.onnx")
    (root / "config.yaml").write_text(yaml.safe_dump(BASE_CONFIG, sort_keys=False))
    Image.fromarray(data.test.images[0, 0].numpy()).save(root / "image.png")
    w = World(root, root / "model", root / "embedded.onnx", root / "sidecar.onnx", root / "config.yaml",
              root / "image.png")
    w.docs = {"model.json": json.loads((w.model / "model.json").read_text()),
              "sidecar": json.loads(sidecar_path(w.onnx_sidecar).read_text()),
              "embedded": json.loads(meta_text), "config": BASE_CONFIG}
    return w


def all_mutations(w: World) -> list[Mutation]:
    out = []
    for target, doc in w.docs.items():
        out += mutations(target, doc)
    return out


# Commands that read each target ({M}: the mutated file or directory, {OUT}: a fresh directory, {IMG}: an image).
COMMANDS: dict[str, list[list[str]]] = {
    "model.json": [["eval", "--model", "{M}", "--batch-size", "128"], ["summary", "--model", "{M}"],
                   ["plan", "--model", "{M}"], ["predict", "{IMG}", "--model", "{M}"],
                   ["export", "--model", "{M}", "--out", "{OUT}/m.onnx", "--exporter", "legacy"],
                   ["surgery", "--model", "{M}", "--out", "{OUT}/shrunk"]],
    "sidecar": [["predict", "{IMG}", "--model", "{M}"],
                ["quantize", "--model", "{M}", "--out", "{OUT}/q.onnx", "--calib-samples", "16", "--no-eval"]],
    "embedded": [["predict", "{IMG}", "--model", "{M}"],
                 ["quantize", "--model", "{M}", "--out", "{OUT}/q.onnx", "--calib-samples", "16", "--no-eval"]],
    # `--set train.max_steps=1` (applied after the file is read) keeps every training stage to one step, also when
    # a mutation drops the config's own budget (`train: null` means 10 epochs): a slow run is not what this tests.
    # Mutations of train.max_steps itself are overridden by it (and so exit 0).
    "config": [["train", "--config", "{M}", "--out", "{OUT}/t", "--set", "train.max_steps=1"],
               ["run", "{M}", "--out", "{OUT}/r", "--set", "train.max_steps=1"]],
}


def materialise(w: World, m: Mutation, where: Path) -> Path:
    """Write the mutated input under ``where``; returns what the command's {M} is."""
    import onnx

    where.mkdir(parents=True)
    if m.target == "model.json":
        d = shutil.copytree(w.model, where / "model")
        (d / "model.json").write_text(apply(w.docs["model.json"], m, "json"))
        return d
    if m.target == "sidecar":
        f = where / "m.onnx"
        shutil.copy(w.onnx_sidecar, f)
        (where / "m.onnx.json").write_text(apply(w.docs["sidecar"], m, "json"))
        return f
    if m.target == "embedded":
        proto = onnx.load(str(w.onnx_embedded))
        for p in proto.metadata_props:
            if p.key == "prunekit":
                p.value = apply(w.docs["embedded"], m, "json")
        f = where / "m.onnx"
        f.write_bytes(proto.SerializeToString())
        return f
    f = where / "config.yaml"
    f.write_text(apply(w.docs["config"], m, "yaml"))
    return f


@dataclass
class Outcome:
    mutation: str
    target: str
    kind: str
    command: str
    returncode: int | None
    seconds: float
    outcome: str  # ok | exit-2 | exit-2-multiline | traceback | timeout | exit-N | signal-N
    refused_by: str | None  # memory | validation (exit 2 only)
    message: str

    @property
    def passed(self) -> bool:
        return self.outcome in ("ok", "exit-2")


def classify(rc: int | None, stdout: str, stderr: str) -> tuple[str, str | None, str]:
    lines = stderr.strip().splitlines()
    if rc is None:
        return "timeout", None, ""
    if "Traceback" in stderr or "Traceback" in stdout:
        return "traceback", None, (lines[-1] if lines else "")
    if rc == 0:
        return "ok", None, ""
    if rc == 2:
        if len(lines) == 1 and ": error: " in lines[0]:
            return "exit-2", "memory" if " of memory but only " in lines[0] else "validation", lines[0]
        return "exit-2-multiline", None, " | ".join(lines[-3:])
    return (f"signal-{-rc}" if rc < 0 else f"exit-{rc}"), None, (lines[-1] if lines else "")


def _limit_memory():  # runs in the child between fork and exec
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _prepare(w: World, m: Mutation, index: int, workdir: Path, commands: dict[str, list[list[str]]] | None,
             name: str | None) -> tuple[list[str], list[str], Path]:
    """Write mutation ``m``'s input for the ``index``-th command of its target (cyclically) in ``workdir/name``;
    returns (the command's template, its arguments, the directory)."""
    cmds = (commands or COMMANDS)[m.target]
    template = cmds[index % len(cmds)]
    where = workdir / (name or f"{m.target}-{index:05d}")
    target = materialise(w, m, where)
    (where / "out").mkdir()
    args = [a.replace("{M}", str(target)).replace("{OUT}", str(where / "out")).replace("{IMG}", str(w.image))
            for a in template]
    return template, args, where


def _outcome(m: Mutation, template: list[str], where: Path, rc: int | None, so: str, se: str,
             seconds: float) -> Outcome:
    outcome, refused_by, message = classify(rc, so, se)
    if outcome in ("ok", "exit-2"):
        shutil.rmtree(where, ignore_errors=True)  # keep the inputs of failures for inspection
    return Outcome(m.id, m.target, m.kind, " ".join(template[:1]), rc, round(seconds, 2), outcome, refused_by,
                   message[:300])


def run_one(w: World, m: Mutation, index: int, workdir: Path, timeout: float = TIME_LIMIT,
            commands: dict[str, list[list[str]]] | None = None, name: str | None = None) -> Outcome:
    """Run mutation ``m`` through the ``index``-th command of its target (cyclically), in ``workdir/name``, in a
    fresh interpreter."""
    template, args, where = _prepare(w, m, index, workdir, commands, name)
    # $PRUNEKIT_FUZZ_SRC: run another source tree on the same inputs (e.g. the code before a fix)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.environ.get("PRUNEKIT_FUZZ_SRC", str(REPO / "src"))}
    env.pop("PRUNEKIT_MAX_MEMORY", None)
    t0 = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, "-m", "prunekit", *args], capture_output=True, text=True, env=env,
                           cwd=where, timeout=timeout, preexec_fn=_limit_memory)
        rc, so, se = r.returncode, r.stdout, r.stderr
    except subprocess.TimeoutExpired as e:
        rc, so, se = None, str(e.stdout or ""), str(e.stderr or "")
    return _outcome(m, template, where, rc, so, se, time.perf_counter() - t0)


def run_all(w: World, selected: Sequence[Mutation], workdir: Path, workers: int = 2,
            progress: Callable[[Outcome], None] | None = None,
            commands: dict[str, list[list[str]]] | None = None, fork: bool = False) -> list[Outcome]:
    """Run the mutations, ``workers`` processes at a time; the command is chosen round-robin per target. Each in a
    fresh interpreter, or with ``fork`` in a process forked from one that imported torch and prunekit once and ran
    nothing else (``cli_fork``: the same limits, ~2 s less CPU per command; not with $PRUNEKIT_FUZZ_SRC)."""
    per_target: Counter = Counter()
    jobs = []
    for n, m in enumerate(selected):
        jobs.append((m, per_target[m.target], f"m{n:05d}"))
        per_target[m.target] += 1

    if fork and not os.environ.get("PRUNEKIT_FUZZ_SRC"):
        from cli_fork import run_many

        prepared = [_prepare(w, m, i, workdir, commands, name) for m, i, name in jobs]
        runs = run_many([args for _, args, _ in prepared], cwd=[where for _, _, where in prepared],
                        env={"OMP_NUM_THREADS": "1", "PRUNEKIT_MAX_MEMORY": None}, workers=workers,
                        timeout=TIME_LIMIT, limit_as=MEMORY_LIMIT)
        outs = []
        for (m, _, _), (template, _, where), r in zip(jobs, prepared, runs, strict=True):
            outs.append(_outcome(m, template, where, None if r.timed_out else r.returncode, r.stdout, r.stderr,
                                 r.seconds))
            if progress:
                progress(outs[-1])
        return outs

    def one(job):
        m, i, name = job
        o = run_one(w, m, i, workdir, commands=commands, name=name)
        if progress:
            progress(o)
        return o

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, jobs))


def summarise(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """Counts per outcome class, per target and per mutation kind (what the report states)."""
    def table(key: Callable[[Outcome], str]) -> dict[str, dict[str, int]]:
        t: dict[str, Counter] = {}
        for o in outcomes:
            t.setdefault(key(o), Counter())[o.outcome if o.outcome != "exit-2" else f"exit-2 ({o.refused_by})"] += 1
        return {k: dict(sorted(v.items())) for k, v in sorted(t.items())}

    classes = Counter(o.outcome for o in outcomes)
    return {"tried": len(outcomes), "outcomes": dict(sorted(classes.items())),
            "refused_by": dict(sorted(Counter(o.refused_by for o in outcomes if o.refused_by).items())),
            "failures": [asdict(o) for o in outcomes if not o.passed],
            "by_target": table(lambda o: o.target), "by_kind": table(lambda o: o.kind),
            "by_command": table(lambda o: f"{o.target} / {o.command}")}
