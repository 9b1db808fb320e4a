"""Stage functions of the pipeline (see :mod:`prunekit.pipeline`). Each gets the pipeline and its stage
directory, writes its outputs there, and returns a small JSON-able result."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from .errors import PrunekitError


def _load(path: Path):
    from .api import load

    return load(path)


def _model_data(p, loaded):
    inp = loaded.spec.input
    d = p.data(inp.channels, list(inp.size))
    d.mean, d.std = list(inp.mean), list(inp.std)
    return d


def _teacher(p):
    """The dense model of the train stage, the distillation teacher of the prune and finetune stages."""
    return _load(p.stage_dir("train") / "model").model.eval()


def _copy_model(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)


def train(p, d: Path) -> dict[str, Any]:
    from .api import save
    from .train import evaluate, fit
    from .workflows import build_model, set_seed, train_config

    cfg = p.cfg
    if cfg.model.init:
        src = Path(cfg.model.init)
        loaded = _load(src)
        if loaded.pruner is not None:
            raise PrunekitError(f"model.init {src} carries pruning masks; start from a dense model")
        _copy_model(src, d / "model")
        res = evaluate(loaded.model.to(p.ctx.device), _model_data(p, loaded), "test", 256, p.ctx.device, p.ctx)
        return {"source": str(src), "test": res}
    set_seed(cfg.seed)
    data = p.data()
    model, spec = build_model(cfg.model, data, cfg.data.resize)
    tcfg = train_config(cfg.train, cfg.seed, num_workers=cfg.data.num_workers)
    result = fit(model, data, tcfg, d, resume=True, ctx=p.ctx, desc="train", log=p.log)
    if p.ctx.is_main:
        spec.extra["metrics"] = {"test": result["test"]}
        save(model.cpu(), d / "model", spec)
    return {"test": result["test"], "steps": result["steps"]}


def prune(p, d: Path) -> dict[str, Any]:
    from .api import save
    from .pruning import prune_
    from .report.inspect import pruned_weight_magnitudes, write_inspection
    from .train import fit, read_metrics
    from .workflows import pruning_config, set_seed, steps_per_epoch, train_config

    cfg = p.cfg
    src = p.stage_dir("train") / "model"
    if not cfg.prune.enabled:
        _copy_model(src, d / "model")
        return {"skipped": True}
    set_seed(cfg.seed)
    loaded = _load(src)
    data = _model_data(p, loaded)
    tcfg = train_config(cfg.train, cfg.seed, cfg.prune, cfg.data.num_workers)
    spe = steps_per_epoch(data, tcfg.batch_size)
    pcfg = pruning_config(cfg.prune, spe, cfg.seed)
    model = loaded.model
    teacher = _teacher(p) if tcfg.distill > 0 else None
    pruner = prune_(model, pcfg, loaded.input_shape, steps_per_epoch=spe)
    scores_before = pruner.criterion.scores(model, pruner.graph, pruner.groups)
    weights_before = pruned_weight_magnitudes(pruner, only_alive=False)
    resuming = (d / "checkpoint.pt").exists()
    if pcfg.criterion == "taylor" and pruner.schedule.begin_step == 0 and not resuming:
        from .data import iterate_batches

        batches = iterate_batches(data, "train", tcfg.batch_size, train=True, seed=cfg.seed + 1,
                                  device=p.ctx.device)
        model.to(p.ctx.device)
        pruner.calibrate(b for _, b in zip(range(pcfg.taylor_batches), batches, strict=False))
    result = fit(model, data, tcfg, d, callbacks=[pruner], resume=True, ctx=p.ctx, desc="prune", log=p.log,
                 teacher=teacher)
    out: dict[str, Any] = {"test": result["test"], "sparsity": pruner.sparsity(), "config": pcfg.to_dict()}
    if p.ctx.is_main:
        model.cpu()
        save(model, d / "model", loaded.spec)
        info = write_inspection(pruner, d, scores_before, weights_before, read_metrics(d / "metrics.jsonl"))
        out["totals"] = info["totals"]
    return out


def surgery(p, d: Path) -> dict[str, Any]:
    from .api import save
    from .io import write_json

    loaded = _load(p.stage_dir("prune") / "model")
    if loaded.pruner is None:
        _copy_model(p.stage_dir("prune") / "model", d / "model")
        return {"skipped": True}
    res = loaded.pruner.shrink(check=True)
    spec = loaded.spec
    spec.extra = {"history": [*spec.extra.get("history", []), {"step": "surgery", **res.to_dict()}]}
    save(res.model.cpu(), d / "model", spec)
    write_json(d / "surgery.json", res.to_dict())
    return res.to_dict()


def finetune(p, d: Path) -> dict[str, Any]:
    from .api import save
    from .train import fit
    from .workflows import set_seed, train_config

    cfg = p.cfg
    src = p.stage_dir("surgery") / "model"
    if not cfg.finetune.enabled or cfg.finetune.epochs == 0:
        _copy_model(src, d / "model")
        return {"skipped": True}
    set_seed(cfg.seed + 1)
    loaded = _load(src)
    data = _model_data(p, loaded)
    tcfg = train_config(cfg.train, cfg.seed + 1, cfg.finetune, cfg.data.num_workers)
    teacher = _teacher(p) if tcfg.distill > 0 else None
    result = fit(loaded.model, data, tcfg, d, resume=True, ctx=p.ctx, desc="finetune", log=p.log, teacher=teacher)
    if p.ctx.is_main:
        save(loaded.model.cpu(), d / "model", loaded.spec)
    return {"test": result["test"], "steps": result["steps"]}


def export(p, d: Path) -> dict[str, Any]:
    from .export import export_model

    loaded = _load(p.stage_dir("finetune") / "model")
    suffix = {"onnx": "model.onnx", "torchscript": "model.ts", "exported-program": "model.pt2"}
    out = {}
    for fmt in p.cfg.export.formats:
        res = export_model(loaded, fmt, d / suffix[fmt], opset=p.cfg.export.opset)
        out[fmt] = {"path": str(d / suffix[fmt]), "max_abs_diff": res.get("max_abs_diff"),
                    "size_bytes": (d / suffix[fmt]).stat().st_size}
    return out


def quantize(p, d: Path) -> dict[str, Any]:
    from .export.quantize import calibration_batches, quantize_onnx

    q = p.cfg.quantize
    if not q.enabled:
        return {"skipped": True}
    loaded = _load(p.stage_dir("finetune") / "model")
    data = _model_data(p, loaded)
    src = p.stage_dir("export") / "model.onnx"
    res = quantize_onnx(src, d / "model.int8.onnx", calibration_batches(data, q.calib_samples),
                        method=q.method, per_channel=q.per_channel, calib_source=f"{p.cfg.data.name} train")
    return {"path": str(d / "model.int8.onnx"), "size_bytes": (d / "model.int8.onnx").stat().st_size,
            "fp32_size_bytes": src.stat().st_size, **{k: v for k, v in res.items() if k not in ("path",)}}


def _latency(rt, shape, repeats: int) -> float:
    from .inference.bench import stats, time_runs

    x = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)
    times = time_runs(lambda: rt.predict_logits(x), warmup=5, repeats=repeats, max_seconds=20)
    return stats(times, 1)["p50_ms"]


def evaluate(p, d: Path) -> dict[str, Any]:
    import torch

    from .inference.runtime import evaluate_runtime, load_runtime
    from .io import write_json
    from .report.summary import profile

    b = p.cfg.bench
    if b.threads:
        torch.set_num_threads(b.threads)
    entries = {"dense": p.stage_dir("train") / "model", "pruned": p.stage_dir("surgery") / "model",
               "finetuned": p.stage_dir("finetune") / "model"}
    q = p.stage_dir("quantize") / "model.int8.onnx"
    stages: dict[str, Any] = {}
    for name, path in entries.items():
        loaded = _load(path)
        data = _model_data(p, loaded)
        rt = load_runtime(path, threads=b.threads or None)
        ev = evaluate_runtime(rt, data, "test")
        prof = profile(loaded.model, loaded.input_shape)
        stages[name] = {"top1": ev["top1"], "top5": ev["top5"], "params": prof.params, "macs": prof.macs,
                        "size_bytes": (path / "model.safetensors").stat().st_size, "runtime": "pytorch fp32",
                        "latency_ms": _latency(rt, loaded.input_shape, b.repeats) if b.enabled else None}
    if q.is_file():
        rt = load_runtime(q, threads=b.threads or None)
        loaded = _load(entries["finetuned"])
        ev = evaluate_runtime(rt, _model_data(p, loaded), "test")
        stages["int8"] = {"top1": ev["top1"], "top5": ev["top5"], "params": stages["finetuned"]["params"],
                          "macs": stages["finetuned"]["macs"], "size_bytes": q.stat().st_size,
                          "runtime": "onnxruntime int8",
                          "latency_ms": _latency(rt, loaded.input_shape, b.repeats) if b.enabled else None}
    onnx = p.stage_dir("export") / "model.onnx"
    if onnx.is_file() and b.enabled:
        rt = load_runtime(onnx, threads=b.threads or None)
        stages["finetuned"]["latency_ms_onnx_fp32"] = _latency(rt, rt.input_shape, b.repeats)
    write_json(d / "evaluate.json", stages)
    return {"stages": stages}


def predict(p, d: Path) -> dict[str, Any]:
    from PIL import Image

    from .inference.predict import predict as run_predict
    from .inference.runtime import load_runtime

    img = p.cfg.predict.image
    if img is None:  # the first test image of the run's dataset
        data = p.data()
        x = data.test.images[0].numpy() if hasattr(data.test, "images") else None
        if x is None:
            raise PrunekitError("predict.image is required for streamed image folders")
        arr = x[0] if x.shape[0] == 1 else x.transpose(1, 2, 0)
        img = d / "sample.png"
        Image.fromarray(arr).save(img)
        truth = data.class_names[int(data.test.labels[0])]
    else:
        truth = None
    forms = {"pytorch": p.stage_dir("finetune") / "model", "onnx": p.stage_dir("export") / "model.onnx",
             "int8": p.stage_dir("quantize") / "model.int8.onnx"}
    out: dict[str, Any] = {"image": str(img), "label": truth}
    for name, path in forms.items():
        if path.exists():
            pred = run_predict(load_runtime(path), [img], topk=p.cfg.predict.topk)[0]
            out[name] = [{"label": lab.name, "prob": round(lab.prob, 4)} for lab in pred.top]
    out["top5"] = out.get("onnx") or out.get("pytorch")
    return out


def report(p, d: Path) -> dict[str, Any]:
    from .report.html import write_report

    paths = write_report(p, p.out)
    return {k: str(v) for k, v in paths.items()}
