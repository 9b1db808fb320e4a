"""The whole pruning guide as one resumable run: train -> prune -> surgery -> finetune -> export -> quantize ->
evaluate -> predict -> report.

Each stage runs one step of :mod:`prunekit.steps` into ``OUT/stages/<stage>/`` and records a fingerprint of
everything it depends on (its config sections and its inputs' fingerprints) in ``.stage.json`` when it
finishes. A re-run skips stages whose fingerprint is unchanged; a changed setting reruns that stage and
everything after it; a killed training stage resumes from its checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import steps
from .config import RunConfig, dump_config
from .errors import PrunekitError, closest
from .io import check_writable_dir, read_json, write_json, write_text

STAGES = ("train", "prune", "surgery", "finetune", "export", "quantize", "evaluate", "predict", "report")
MARKER = ".stage.json"
PARTIAL = "partial.json"  # a stage that started and has not finished (its fingerprint: resumable)
DISTRIBUTED_STAGES = {"train", "prune", "finetune"}


@dataclass
class Stage:
    name: str
    deps: tuple[str, ...]  # upstream stages
    sections: tuple[str, ...]  # config sections it reads
    fn: Callable[[Pipeline, Path], dict[str, Any]]


def _fp(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _copy_model(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)


# --- the stages: each calls one step ---------------------------------------------------------------------


def _train(p: Pipeline, d: Path) -> dict[str, Any]:
    return steps.train(p.cfg, d, data=p.data(), ctx=p.ctx, log=p.log).to_dict()


def _prune(p: Pipeline, d: Path) -> dict[str, Any]:
    src = p.stage_dir("train") / "model"
    if not p.cfg.prune.enabled:
        _copy_model(src, d / "model")
        return {"skipped": True}
    return steps.prune(p.cfg, src, d, data=p.data(), ctx=p.ctx, log=p.log).to_dict()


def _surgery(p: Pipeline, d: Path) -> dict[str, Any]:
    res = steps.surgery(p.stage_dir("prune") / "model", d / "model", require_change=False)
    write_json(d / "surgery.json", res.result)
    return res.to_dict()


def _finetune(p: Pipeline, d: Path) -> dict[str, Any]:
    src = p.stage_dir("surgery") / "model"
    if not p.cfg.finetune.enabled or p.cfg.finetune.epochs == 0:
        _copy_model(src, d / "model")
        return {"skipped": True}
    teacher = None
    if p.cfg.finetune.distill > 0:  # the dense model of the train stage
        from .saved import load

        teacher = load(p.stage_dir("train") / "model").model.eval()
    return steps.finetune(p.cfg, src, d, teacher=teacher, data=p.data(), ctx=p.ctx, log=p.log).to_dict()


def _export(p: Pipeline, d: Path) -> dict[str, Any]:
    out = {}
    for fmt in p.cfg.export.formats:
        path = d / steps.EXPORT_NAMES[fmt]
        res = steps.export(p.stage_dir("finetune") / "model", path, fmt, opset=p.cfg.export.opset,
                           exporter=p.cfg.export.exporter)
        out[fmt] = {"path": str(path), "max_abs_diff": res.get("max_abs_diff"), "size_bytes": res["size_bytes"]}
    return out


def _quantize(p: Pipeline, d: Path) -> dict[str, Any]:
    from .deploy.artifact import FP32

    onnx = p.stage_dir("export") / "model.onnx"
    if not p.cfg.quantize.enabled:
        deploy = {"choice": FP32, "path": str(onnx), "reason": "quantize.enabled is false: the fp32 ONNX model",
                  "objective": p.cfg.quantize.objective}
        write_json(d / "deploy.json", deploy)
        return {"skipped": True, "deploy": deploy}
    out = d / "model.int8.onnx"
    res = steps.quantize(onnx, out, p.cfg.data, p.cfg.quantize, evaluate=True, seed=p.cfg.seed, bench=p.cfg.bench,
                         bundle=p.data(), log=p.log)
    write_json(d / "deploy.json", res["deploy"])
    p.log(f"[quantize] deploy {res['deploy']['choice']}: {res['deploy']['reason']}")
    return {"path": str(out), **{k: v for k, v in res.items() if k not in ("path",)}}


# runtime labels of report.json's per-stage latency
PYTORCH, ORT_FP32, ORT_INT8 = "pytorch", "onnxruntime-fp32", "onnxruntime-int8"
LATENCY_RUNTIMES = (PYTORCH, ORT_FP32, ORT_INT8)


def _evaluate(p: Pipeline, d: Path) -> dict[str, Any]:
    """Accuracy of every stage on the full test split, and batch-1 latency of every stage in every runtime it
    has on this machine (PyTorch eager; ONNX Runtime fp32, exported here for dense and pruned; ONNX Runtime
    int8 for the quantized model), each runtime's models timed in alternating rounds (ONNX Runtime: as many as the
    deploy decision, ``DECISION_ROUNDS``; with 3, the demo's dense/fine-tuned ratio ranged 2.3-3.5x run to run)."""
    import torch

    from .cost import profile
    from .inference.bench import DECISION_ROUNDS, compare_onnx, load_average, stats, time_interleaved
    from .inference.runtime import load_runtime
    from .saved import load

    b = p.cfg.bench
    if b.threads:
        torch.set_num_threads(b.threads)
    threads = b.threads or None
    stages: dict[str, Any] = {}
    torch_rts, onnx_files = {}, {}
    for name, stage in (("dense", "train"), ("pruned", "surgery"), ("finetuned", "finetune")):
        path = p.stage_dir(stage) / "model"
        ev = steps.evaluate(path, p.cfg.data, seed=p.cfg.seed, bundle=p.data())
        loaded = load(path)
        prof = profile(loaded.model, loaded.input_shape)
        stages[name] = {"top1": ev["top1"], "top5": ev["top5"], "params": prof.params, "macs": prof.macs,
                        "size_bytes": (path / "model.safetensors").stat().st_size, "runtime": "pytorch fp32",
                        "latency": dict.fromkeys(LATENCY_RUNTIMES)}
        if b.enabled:
            torch_rts[name] = load_runtime(path, threads=threads)
            onnx = p.stage_dir("export") / "model.onnx"
            if name != "finetuned" or not onnx.is_file():
                onnx = d / f"{name}.onnx"
                steps.export(path, onnx, "onnx", opset=p.cfg.export.opset, exporter=p.cfg.export.exporter)
            onnx_files[(name, ORT_FP32)] = onnx
    q = p.stage_dir("quantize") / "model.int8.onnx"
    if q.is_file():
        ev = steps.evaluate(q, p.cfg.data, seed=p.cfg.seed, bundle=p.data())
        stages["int8"] = {"top1": ev["top1"], "top5": ev["top5"], "params": stages["finetuned"]["params"],
                          "macs": stages["finetuned"]["macs"], "size_bytes": q.stat().st_size,
                          "runtime": "onnxruntime int8", "latency": dict.fromkeys(LATENCY_RUNTIMES)}
        if b.enabled:
            onnx_files[("int8", ORT_INT8)] = q
    if b.enabled:
        x = np.random.default_rng(0).standard_normal((1, *next(iter(torch_rts.values())).input_shape))
        x = x.astype(np.float32)
        times = time_interleaved({k: (lambda rt=rt: rt.predict_logits(x)) for k, rt in torch_rts.items()}, 5,
                                 b.repeats, 20.0)
        for name, t in times.items():
            stages[name]["latency"][PYTORCH] = stats(t, 1)["p50_ms"]
        ort = compare_onnx({f"{n}|{r}": f for (n, r), f in onnx_files.items()}, (1,), threads, b.repeats,
                           rounds=DECISION_ROUNDS)
        for key, per in ort.items():
            name, runtime = key.split("|")
            stages[name]["latency"][runtime] = per["1"]["p50_ms"]
    deploy = dict((p.results.get("quantize") or {}).get("deploy") or {})
    if deploy:
        row = "int8" if deploy.get("choice") == ORT_INT8 else "finetuned"
        if row in stages:
            deploy["stage"] = row
            deploy["latency_ms"] = stages[row]["latency"].get(deploy["choice"])
            deploy["top1"] = stages[row]["top1"]
            stages[row]["latency_ms"] = deploy["latency_ms"]
    out = {"stages": stages, "deploy": deploy, "load_avg": load_average() if b.enabled else None,
           "threads": threads}
    write_json(d / "evaluate.json", out)
    return out


def _predict(p: Pipeline, d: Path) -> dict[str, Any]:
    from PIL import Image

    img, truth = p.cfg.predict.image, None
    if img is None:  # the first test image of the run's dataset
        data = p.data()
        if not hasattr(data.test, "images"):
            raise PrunekitError("predict.image is required for streamed image folders")
        x = data.test.images[0].numpy()
        img = d / "sample.png"
        Image.fromarray(x[0] if x.shape[0] == 1 else x.transpose(1, 2, 0)).save(img)
        truth = data.class_names[int(data.test.labels[0])]
    forms = {"pytorch": p.stage_dir("finetune") / "model", "onnx": p.stage_dir("export") / "model.onnx",
             "int8": p.stage_dir("quantize") / "model.int8.onnx"}
    out: dict[str, Any] = {"image": str(img), "label": truth}
    for name, path in forms.items():
        if path.exists():
            _, preds = steps.predict(path, [img], topk=p.cfg.predict.topk)
            out[name] = [{"label": lab.name, "prob": round(lab.prob, 4)} for lab in preds[0].top]
    out["top5"] = out.get("onnx") or out.get("pytorch")
    return out


def _report(p: Pipeline, d: Path) -> dict[str, Any]:
    from .report.html import write_report

    return {k: str(v) for k, v in write_report(p, p.out).items()}


# --- the runner --------------------------------------------------------------------------------------------


class Pipeline:
    """Runs the stages of one :class:`RunConfig` in ``cfg.out``."""

    def __init__(self, cfg: RunConfig, log: Callable[[str], None] = print):
        from .train import init_distributed

        self.cfg = cfg
        self.out = Path(cfg.out)
        self.log = log
        self.ctx = init_distributed(cfg.device)
        self.results: dict[str, dict[str, Any]] = {}
        self.fingerprints: dict[str, str] = {}
        self._data = None
        self.stages = [
            Stage("train", (), ("model", "data", "train", "seed"), _train),
            Stage("prune", ("train",), ("prune", "data", "seed"), _prune),
            Stage("surgery", ("prune",), (), _surgery),
            Stage("finetune", ("surgery", "train"), ("finetune", "train", "data", "seed"), _finetune),
            Stage("export", ("finetune",), ("export",), _export),
            Stage("quantize", ("export",), ("quantize", "data", "bench"), _quantize),
            Stage("evaluate", ("train", "prune", "finetune", "export", "quantize"), ("data", "bench"), _evaluate),
            Stage("predict", ("export", "quantize"), ("predict", "data"), _predict),
            Stage("report", ("train", "prune", "surgery", "finetune", "export", "quantize", "evaluate", "predict"),
                  (), _report),
        ]

    def stage_dir(self, name: str) -> Path:
        return self.out / "stages" / name

    def data(self):
        """The run's dataset, loaded once."""
        if self._data is None:
            self._data = steps.load_dataset(self.cfg.data, seed=self.cfg.seed)
        return self._data

    def section(self, name: str) -> Any:
        v = getattr(self.cfg, name)
        return self.cfg.to_dict()[name] if dataclasses.is_dataclass(v) else v

    def fingerprint(self, stage: Stage) -> str:
        payload = {"stage": stage.name, "sections": {s: self.section(s) for s in stage.sections},
                   "deps": {d: self.fingerprints.get(d) for d in stage.deps}}
        return _fp(payload)

    def run(self, start: str | None = None, stop: str | None = None) -> dict[str, Any]:
        """Run the stages in order, skipping those up to date; ``start`` forces that stage and all later ones,
        ``stop`` ends the run after that stage: the later ones are not run, and when any stage ran their
        up-to-date and partial markers are removed (a forced stage's new outputs would otherwise leave them stale
        or resumable from old inputs), so that the next run redoes them from the start."""
        for name in (start, stop):
            if name is not None and name not in STAGES:
                raise PrunekitError(f"unknown stage '{name}'{closest(name, STAGES)}; stages: {', '.join(STAGES)}")
        if start is not None and stop is not None and STAGES.index(stop) < STAGES.index(start):
            raise PrunekitError(f"--to {stop} comes before --from {start}; stages: {', '.join(STAGES)}")
        check_writable_dir(self.out, "run directory")
        if self.ctx.is_main:
            write_text(self.out / "config.yaml", dump_config(self.cfg))
        forced = False
        t_all = time.perf_counter()
        names = [s.name for s in self.stages]
        end = names.index(stop) + 1 if stop else len(names)
        ran = False
        for stage in self.stages[:end]:
            forced = forced or stage.name == start
            fp = self.fingerprint(stage)
            self.fingerprints[stage.name] = fp
            d = self.stage_dir(stage.name)
            marker = read_json(d / MARKER) if (d / MARKER).is_file() else None
            if marker and marker.get("fingerprint") == fp and not forced:
                self.results[stage.name] = marker.get("result", {})
                self.log(f"[{stage.name}] up to date, skipped")
                continue
            partial = (d / PARTIAL).is_file() and read_json(d / PARTIAL).get("fingerprint") == fp
            if self.ctx.is_main and d.exists() and (marker or not partial or forced):
                shutil.rmtree(d)  # stale outputs from another config: start this stage afresh
            self._barrier()
            if self.ctx.is_main:
                d.mkdir(parents=True, exist_ok=True)
                write_json(d / PARTIAL, {"fingerprint": fp})
            self._barrier()
            t0 = time.perf_counter()
            self.log(f"[{stage.name}] running" + (" (resuming)" if partial and not forced else ""))
            result = (stage.fn(self, d) or {}) if stage.name in DISTRIBUTED_STAGES or self.ctx.is_main else {}
            result["seconds"] = round(time.perf_counter() - t0, 2)
            self._barrier()
            if self.ctx.is_main:
                write_json(d / MARKER, {"fingerprint": fp, "result": result, "finished": time.time()})
                (d / PARTIAL).unlink(missing_ok=True)
            self._barrier()
            if not self.ctx.is_main:
                result = read_json(d / MARKER)["result"]
            self.results[stage.name] = result
            ran = True
        if ran and self.ctx.is_main:
            for later in names[end:]:  # neither up to date nor resumable: their inputs may have changed
                for f in (MARKER, PARTIAL):
                    (self.stage_dir(later) / f).unlink(missing_ok=True)
        self.results["_seconds"] = round(time.perf_counter() - t_all, 2)
        return self.results

    def _barrier(self) -> None:
        from .train.distributed import barrier

        barrier()
