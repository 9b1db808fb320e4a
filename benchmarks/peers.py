"""Peers benchmark (issue 9): prunekit vs Torch-Pruning vs torch.nn.utils.prune vs width multipliers.

Everything side by side on the same data, optimiser (SGD + Nesterov, cosine, label smoothing 0.1) and total epoch
budget: every method gets ``dense_epochs + prune_epochs + finetune_epochs`` epochs in all.

Variants (name pattern):

* ``dense``                      -- MobileNet V1 trained from scratch for the whole budget.
* ``pk-gradual-{crit}-{scope}-R`` -- prunekit PolynomialDecay (power 3, 0 -> R over the first 60% of the prune
  phase, ~10 mask updates) on the pointwise convs' output channels while training for ``prune_epochs`` from the
  shared dense model (trained ``dense_epochs``), then surgery (verified) and ``finetune_epochs`` of fine-tuning.
  ``crit`` l1 / taylor, ``scope`` local (every layer to R) / global (ranked across layers, R overall).
* ``pk-oneshot-{crit}-{scope}-R`` -- prunekit one-shot to R at once (Taylor: 16 calibration batches first),
  surgery, then ``prune_epochs + finetune_epochs`` of fine-tuning.
* ``tp-oneshot-mag-R``           -- Torch-Pruning ``BasePruner`` (formerly ``MetaPruner``) with
  ``MagnitudeImportance()`` (its defaults: group L2 norm, mean-reduced and -normalised), ``pruning_ratio=R``,
  ``ignored_layers=[stem.conv, classifier]``: the groups left are exactly prunekit's pointwise groups (each
  pointwise conv's output channels with their BN, the next depthwise conv and the next pointwise conv's inputs;
  checked: same channel counts, params and MACs as prunekit's local pruning at the same R). One ``step()``, then
  ``prune_epochs + finetune_epochs`` of fine-tuning.
* ``tp-iterative-mag-R``         -- the same pruner with ``iterative_steps=K``: K x (``step()``, then
  ``prune_epochs / K`` epochs of training, each a fresh cosine: the optimiser must be rebuilt after every step
  because Torch-Pruning replaces the parameters), then ``finetune_epochs``. Torch-Pruning's documented recipe.
* ``torch-ln-structured-R``      -- ``torch.nn.utils.prune.ln_structured(conv, "weight", R, n=1, dim=0)`` on every
  pointwise conv, one-shot, then ``prune_epochs + finetune_epochs`` of training with the masks in place. Masks
  only: parameters, MACs, ONNX size and latency stay those of the dense network (the pruned channels even keep a
  non-zero output, BN's bias), and the PyTorch-eager model pays for the mask multiply on every call.
* ``width-W-scratch``            -- MobileNet V1 width W, W chosen so the parameter count matches prunekit local
  pruning at R, trained from scratch for the whole budget.

For each: test top-1/top-5 (fp32) and int8 top-1 (ONNX Runtime), params, MACs (conv + linear), ONNX fp32 / int8
file sizes (prunekit's exporter and static int8 QDQ quantizer, 256 calibration images from the training split),
CPU latency at batch 1 (p50; PyTorch eager, ONNX Runtime fp32 and int8), training wall time. Seeds are fixed
(``--seed``, data order and init); where two key results are within noise (difference < 2 standard errors of the
test-set estimate) the pair is rerun with seed+1 before any claim (quick: the closest pair; full: up to
``--reseed`` pairs).

Full mode (GPU): width 1.0, full data, 30 dense + 5 prune + 10 fine-tune epochs (45 in all), batch 256, LR 0.1
(dense, baselines) / 0.05 (prune, fine-tune: train.lr / 2, the library default), TP iterative K=5, all variants,
dynamo ONNX exporter.
Quick mode (CPU, ~45 min on 2 quiet cores): width 0.5, a class-balanced 10k-image training subset (full 10k test
set), 3 dense + 2 prune + 1 fine-tune epochs (6 in all), batch 128, LR 0.05 / 0.025, TP iterative K=4, the
legacy (TorchScript) ONNX exporter (3x faster to export; same graph), and a reduced matrix (``QUICK_VARIANTS``).

Usage::

    python benchmarks/peers.py --quick --data-dir /path/to/fashion-mnist
    python benchmarks/peers.py --data-dir /path/to/fashion-mnist                 # full (GPU)
    python benchmarks/peers.py --quick --variants 'tp-|pk-gradual-l1-local'      # a subset (regex)
    python benchmarks/peers.py --list

Writes ``benchmarks/results/peers[_quick].{json,md}`` and ``peers[_quick]_pareto.png``; a partial JSON is kept up
to date in ``benchmarks/results/_work/peers[_quick]/partial.json`` while it runs.
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

RATIOS = (0.5, 0.75)
MODES = {
    "full": {"width": 1.0, "train_subset": 0, "dense_epochs": 30, "prune_epochs": 5, "finetune_epochs": 10,
             "batch_size": 256, "lr": 0.1, "stage_lr": 0.05, "warmup_epochs": 1.0, "tp_steps": 5,
             "exporter": "auto", "reseed": 6, "latency_repeats": 300, "latency_seconds": 10.0},
    "quick": {"width": 0.5, "train_subset": 10000, "dense_epochs": 3, "prune_epochs": 2, "finetune_epochs": 1,
              "batch_size": 128, "lr": 0.05, "stage_lr": 0.025, "warmup_epochs": 1.0, "tp_steps": 4,
              "exporter": "legacy", "reseed": 1, "latency_repeats": 200, "latency_seconds": 4.0},
}


def all_variants() -> list[str]:
    v = ["dense"]
    for r in RATIOS:
        t = int(r * 100)
        v += [f"pk-{k}-{c}-{s}-{t}" for k in ("gradual", "oneshot") for c in ("l1", "taylor") for s in ("local", "global")]
        v += [f"tp-oneshot-mag-{t}", f"tp-iterative-mag-{t}", f"torch-ln-structured-{t}", f"width-match-{t}"]
    return v


QUICK_VARIANTS = [
    "dense",
    "pk-gradual-l1-local-50", "pk-gradual-l1-global-50", "pk-gradual-taylor-local-50",
    "pk-oneshot-l1-local-50", "pk-oneshot-taylor-local-50", "tp-oneshot-mag-50", "tp-iterative-mag-50",
    "torch-ln-structured-50", "width-match-50",
    "pk-gradual-l1-local-75", "pk-oneshot-l1-local-75", "tp-oneshot-mag-75", "tp-iterative-mag-75", "width-match-75",
]


NOTES = [
    "Params and MACs are measured on the final model (MACs: conv + linear, per image). Torch-Pruning and prunekit "
    "local pruning give identical architectures at the same ratio; global scope allocates per-layer ratios "
    "from normalised scores, so its params/MACs differ.",
    "torch.nn.utils.prune rows: params/MACs/ONNX are the dense network's (masks only); eager latency is measured "
    "with the masks attached (forward pre-hooks recompute weight * mask every call).",
    "Latency is batch 1 on CPU; on a shared machine treat differences under ~20% as noise.",
    "Torch-Pruning iterative: the LR schedule restarts for each of the K segments (the optimiser is rebuilt "
    "because Torch-Pruning replaces parameters); prunekit gradual trains through the masks with one schedule.",
    "torch.nn.utils.prune rows, int8: the masked (zeroed) pointwise channels still pass relu6(BN beta) to the next "
    "depthwise conv, whose BatchNorm then sees a near-constant input: running variance ~0, so BN folding at export "
    "multiplies those depthwise filters by ~1/sqrt(eps). fp32 is unaffected, but the activation range of the tensor "
    "grows and static int8 quantization can lose accuracy (compare the int8 and fp32 top-1 of these rows). Removing "
    "the channels (surgery) avoids this.",
]


def family(name: str) -> str:
    for pre, fam in (("pk-gradual", "prunekit gradual"), ("pk-oneshot", "prunekit one-shot"),
                     ("tp-", "Torch-Pruning"), ("torch-ln", "torch.nn.utils.prune (masks)"),
                     ("width-", "width multiplier, scratch"), ("dense", "dense")):
        if name.startswith(pre):
            return fam
    return "?"


def ratio_of(name: str) -> float | None:
    m = re.search(r"-(\d+)$", name)
    return int(m.group(1)) / 100 if m else None


# --- training pieces -------------------------------------------------------------------------------


class Runner:
    def __init__(self, cfg: dict, data, device, work: Path, ctx):
        self.cfg, self.data, self.device, self.work, self.ctx = cfg, data, device, work, ctx
        self.dense_cache: dict[int, tuple[nn.Module, dict]] = {}

    def tcfg(self, epochs: float, seed: int, stage: bool):
        from prunekit.train import TrainConfig

        c = self.cfg
        return TrainConfig(epochs=epochs, batch_size=c["batch_size"], lr=c["stage_lr"] if stage else c["lr"],
                           optimizer="sgd", momentum=0.9, nesterov=True, weight_decay=5e-5, label_smoothing=0.1,
                           warmup_epochs=0.0 if stage else c["warmup_epochs"], seed=seed, amp=True).validate()

    def fit(self, model, epochs, seed, stage, tag, callbacks=()):
        from prunekit.train import fit

        d = self.work / tag
        if d.exists():
            shutil.rmtree(d)
        torch.manual_seed(seed)  # dropout: results must not depend on what ran before in this process
        res = fit(model, self.data, self.tcfg(epochs, seed, stage), d, callbacks=callbacks, ctx=self.ctx, desc=tag)
        model.cpu()
        (d / "checkpoint.pt").unlink(missing_ok=True)  # not resumed; keep metrics.jsonl only (disk)
        return C.train_summary(res, d / "metrics.jsonl")

    @property
    def total_epochs(self) -> float:
        c = self.cfg
        return c["dense_epochs"] + c["prune_epochs"] + c["finetune_epochs"]

    def dense(self, seed: int) -> tuple[nn.Module, dict]:
        """The shared starting point: dense trained ``dense_epochs`` (cached in memory and on disk)."""
        from prunekit.saved import load, save

        if seed in self.dense_cache:
            m, info = self.dense_cache[seed]
            return copy.deepcopy(m), info
        c = self.cfg
        key = f"dense_w{c['width']}_e{c['dense_epochs']:g}_n{len(self.data.train)}_b{c['batch_size']}_lr{c['lr']}_s{seed}"
        mdir = self.work / "dense_start" / key
        if c.get("dense_dir") and seed == c["seed"]:
            loaded = load(c["dense_dir"])
            m, info = loaded.model, {"source": c["dense_dir"], "wall_s": None}
        elif (mdir / "model.json").is_file() and not c.get("retrain"):
            loaded = load(mdir)
            hist = loaded.spec.extra.get("history") or [{}]
            m, info = loaded.model, {**{k: v for k, v in hist[0].items() if k != "step"}, "source": f"cached {mdir}"}
        else:
            C.log(f"dense start point: width {c['width']}, {c['dense_epochs']:g} epochs, seed {seed}")
            m = C.mobilenet(c["width"], seed)
            s = self.fit(m, c["dense_epochs"], seed, False, f"dense_start_s{seed}")
            info = {"source": "trained here", "wall_s": s["wall_s"], "top1": s["top1"], "img_per_s": s["img_per_s"]}
            save(m, mdir, C.model_spec(self.data, c["width"], {"history": [{"step": "train", **info}]}))
        self.dense_cache[seed] = (m, info)
        return copy.deepcopy(m), info

    # -- variants --
    def run(self, name: str, seed: int) -> tuple[nn.Module, dict]:
        c = self.cfg
        r = ratio_of(name)
        rec = {"name": name, "family": family(name), "ratio": r, "seed": seed, "total_epochs": self.total_epochs}
        t0 = time.perf_counter()
        la0 = C.loadavg()
        if name == "dense":
            model = C.mobilenet(c["width"], seed)
            rec["train"] = [self.fit(model, self.total_epochs, seed, False, f"{name}_s{seed}")]
        elif name.startswith("width-"):
            w = self.match_width(r)
            rec["width"] = w
            model = C.mobilenet(w, seed)
            rec["train"] = [self.fit(model, self.total_epochs, seed, False, f"{name}_s{seed}")]
        else:
            t_dense = time.perf_counter()
            model, dinfo = self.dense(seed)
            t0 += time.perf_counter() - t_dense  # the shared dense start point is reported separately
            rec["dense_start"] = dinfo
            if name.startswith("pk-"):
                model = self.prunekit(model, name, r, seed, rec)
            elif name.startswith("tp-"):
                model = self.torch_pruning(model, name, r, seed, rec)
            elif name.startswith("torch-ln"):
                model = self.ln_structured(model, r, seed, rec)
            else:
                raise SystemExit(f"unknown variant {name}")
        rec["wall_s"] = time.perf_counter() - t0
        dw = (rec.get("dense_start") or {}).get("wall_s")
        rec["wall_s_incl_dense"] = rec["wall_s"] + dw if dw else None
        rec["load"] = {"start": la0, "end": C.loadavg()}
        rec["top1"], rec["top5"] = rec["train"][-1]["top1"], rec["train"][-1]["top5"]
        return model, rec

    def match_width(self, r: float) -> float:
        """Width whose parameter count matches prunekit local pruning of the pointwise channels at ``r``."""
        from prunekit.pruning import OneShot, PruningConfig, prune_

        m = C.mobilenet(self.cfg["width"], 0)
        pr = prune_(m, PruningConfig(schedule=OneShot(r)), (1, 28, 28))
        pr.step(0)
        return C.width_for_params(pr.shrink(check=False).params_after)

    def prunekit(self, model, name, r, seed, rec):
        from prunekit.data import iterate_batches
        from prunekit.pruning import OneShot, PruningConfig, ScheduleSpec, prune_
        from prunekit.steps import steps_per_epoch

        c = self.cfg
        _, kind, crit, scope, _ = name.split("-")
        spe = steps_per_epoch(self.data, c["batch_size"])
        if kind == "gradual":
            pcfg = PruningConfig(schedule=ScheduleSpec(kind="polynomial_decay", final_sparsity=r, power=3.0),
                                 criterion=crit, scope=scope, seed=seed)
            pruner = prune_(model, pcfg, (1, 28, 28), steps_per_epoch=spe, total_steps=round(c["prune_epochs"] * spe))
            rec["schedule"] = pruner.schedule.get_config()
            rec["train"] = [self.fit(model, c["prune_epochs"], seed, True, f"{name}_s{seed}_prune", callbacks=[pruner])]
            ft_epochs = c["finetune_epochs"]
        else:
            pcfg = PruningConfig(schedule=OneShot(r), criterion=crit, scope=scope,
                                 seed=seed).validate()
            pruner = prune_(model, pcfg, (1, 28, 28))
            if crit == "taylor":
                batches = iterate_batches(self.data, "train", c["batch_size"], train=True, seed=seed + 1)
                pruner.calibrate(b for _, b in zip(range(pcfg.taylor_batches), batches, strict=False))
            pruner.step(0)
            rec["schedule"] = {"kind": "one_shot", "target_sparsity": r}
            rec["train"] = []
            ft_epochs = c["prune_epochs"] + c["finetune_epochs"]
        rec["sparsity"] = pruner.sparsity()
        sres = pruner.shrink(check=True)  # VerificationError if the shrunk model is not the masked one
        rec["surgery"] = sres.to_dict()
        model = sres.model
        rec["train"].append(self.fit(model, ft_epochs, seed, True, f"{name}_s{seed}_finetune"))
        return model

    def tp_pruner(self, model, r, steps):
        import torch_pruning as tp

        return tp.pruner.BasePruner(model, torch.randn(1, 1, 28, 28), importance=tp.importance.MagnitudeImportance(),
                                    pruning_ratio=r, iterative_steps=steps,
                                    ignored_layers=[model.stem.conv, model.classifier])

    def torch_pruning(self, model, name, r, seed, rec):
        c = self.cfg
        iterative = "iterative" in name
        steps = c["tp_steps"] if iterative else 1
        pruner = self.tp_pruner(model, r, steps)
        rec["tp"] = {"importance": "MagnitudeImportance() (p=2, group mean, mean-normalised)", "iterative_steps": steps,
                     "ignored_layers": ["stem.conv", "classifier"], "pruner": "torch_pruning.pruner.BasePruner"}
        rec["train"] = []
        if iterative:
            for k in range(steps):
                pruner.step()
                rec["train"].append(self.fit(model, c["prune_epochs"] / steps, seed, True, f"{name}_s{seed}_it{k}"))
            ft = c["finetune_epochs"]
        else:
            pruner.step()
            ft = c["prune_epochs"] + c["finetune_epochs"]
        pw = [m.out_channels for n, m in model.named_modules() if n.endswith("pw.conv")]
        rec["pointwise_channels"] = pw
        rec["train"].append(self.fit(model, ft, seed, True, f"{name}_s{seed}_finetune"))
        return model

    def ln_structured(self, model, r, seed, rec):
        from torch.nn.utils import prune

        c = self.cfg
        convs = [m for n, m in model.named_modules() if n.endswith("pw.conv")]
        for m in convs:
            prune.ln_structured(m, "weight", amount=r, n=1, dim=0)
        rec["train"] = [self.fit(model, c["prune_epochs"] + c["finetune_epochs"], seed, True, f"{rec['name']}_s{seed}")]
        zero_rows = sum(int((m.weight.detach().flatten(1).abs().sum(1) == 0).sum()) for m in convs)
        total_rows = sum(m.out_channels for m in convs)
        nonzero = sum(int((p.detach() != 0).sum()) for n, p in model.named_parameters() if not n.endswith("weight_orig"))
        nonzero += sum(int((m.weight.detach() != 0).sum()) for m in convs)
        bn_beta = [float(mod.pw.bn.bias.detach()[(mod.pw.conv.weight_mask.flatten(1).sum(1) == 0)].abs().mean())
                   for mod in model.blocks]
        rec["masks"] = {"zeroed_filters": zero_rows, "filters": total_rows, "nonzero_params": nonzero,
                        "mean_abs_bn_bias_of_masked_channels": float(np.mean(bn_beta))}
        return model


# --- deployment metrics ----------------------------------------------------------------------------


def deploy_metrics(model: nn.Module, name: str, data, cfg: dict, out_dir: Path, threads: int) -> dict:
    """Params, MACs, ONNX fp32/int8 sizes, int8 top-1, batch-1 latency (PyTorch eager, ORT fp32, ORT int8)."""
    from torch.nn.utils import prune

    from prunekit.deploy import DeployMeta, calibration_batches, export_onnx, ort_session, quantize_onnx
    from prunekit.inference.bench import stats, time_runs

    model = model.eval().cpu()
    x1 = torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    rep, secs = cfg["latency_repeats"], cfg["latency_seconds"]
    out: dict = {}
    with torch.inference_mode():
        out["pytorch_fp32_p50_ms"] = stats(time_runs(lambda: model(x1), 10, rep, secs), 1)["p50_ms"]
    masked = [m for m in model.modules() if hasattr(m, "weight_mask")]
    if masked:  # torch.nn.utils.prune: time the masked model above, then bake the masks for export
        for m in masked:
            prune.remove(m, "weight")
        with torch.inference_mode():
            out["pytorch_fp32_p50_ms_masks_removed"] = stats(time_runs(lambda: model(x1), 10, rep, secs), 1)["p50_ms"]
    out.update(C.params_macs(model))
    out["nonzero_params"] = sum(int((p != 0).sum()) for p in model.parameters())
    spec = C.model_spec(data, cfg["width"])
    fp32, int8 = out_dir / f"{name}.onnx", out_dir / f"{name}.int8.onnx"
    e = export_onnx(model, DeployMeta.from_spec(spec, "onnx"), fp32, exporter=cfg["exporter"])
    q = quantize_onnx(fp32, int8, calibration_batches(data, 256), calib_source="training split, first 256")
    out.update({"onnx_fp32_bytes": e["bytes"], "onnx_int8_bytes": q["bytes"], "onnx_exporter": e["exporter"],
                "onnx_max_abs_diff": e["max_abs_diff"]})
    from prunekit.data import iterate_batches

    for tag, path in (("fp32", fp32), ("int8", int8)):
        sess = ort_session(path, threads)
        iname = sess.get_inputs()[0].name
        x = x1.numpy()
        out[f"ort_{tag}_p50_ms"] = stats(time_runs(lambda s=sess, x=x, n=iname: s.run(None, {n: x}), 10, rep, secs), 1)["p50_ms"]
        if tag == "int8":
            correct = n = 0
            for xb, yb in iterate_batches(data, "test", 500, train=False):
                pred = sess.run(None, {iname: xb.numpy()})[0].argmax(1)
                correct += int((pred == yb.numpy()).sum())
                n += len(yb)
            out["int8_top1"] = 100 * correct / n
    return out


# --- comparisons, report ---------------------------------------------------------------------------


def se_diff(a: float, b: float, n: int) -> float:
    return (C.binomial_se(a, n) ** 2 + C.binomial_se(b, n) ** 2) ** 0.5


def key_pairs(recs: dict[str, dict]) -> list[tuple[str, str]]:
    pairs = []
    for r in RATIOS:
        t = int(r * 100)
        pk = [n for n in recs if n.startswith("pk-") and n.endswith(f"-{t}")]
        tp_ = [n for n in recs if n.startswith("tp-") and n.endswith(f"-{t}")]
        cand = [(f"pk-gradual-l1-local-{t}", f"tp-iterative-mag-{t}"), (f"pk-oneshot-l1-local-{t}", f"tp-oneshot-mag-{t}")]
        if pk:
            best_pk = max(pk, key=lambda n: recs[n]["top1"])
            cand.append((best_pk, f"width-match-{t}"))
            if tp_:
                cand.append((best_pk, max(tp_, key=lambda n: recs[n]["top1"])))
            cand.append((best_pk, "dense"))
        for a, b in cand:
            if a in recs and b in recs and (a, b) not in pairs and a != b:
                pairs.append((a, b))
    return pairs


def comparisons(recs: dict[str, dict], n_test: int) -> list[dict]:
    comps = []
    for a, b in key_pairs(recs):
        ta, tb = recs[a]["top1"], recs[b]["top1"]
        comps.append({"a": a, "b": b, "top1_a": ta, "top1_b": tb, "diff": ta - tb, "two_se": 2 * se_diff(ta, tb, n_test)})
    return comps


def merge(paths: list[str], prefix: Path) -> int:
    """Combine result files of time-boxed runs with the same settings into one report (later files win)."""
    import json

    docs = [json.loads(Path(p).read_text()) for p in paths]
    base = docs[0]
    for d in docs[1:]:
        if d["config"] != base["config"] or d["data"] != base["data"]:
            raise SystemExit(f"cannot merge: settings differ between {paths[0]} and the others")
    recs: dict[str, dict] = {}
    for d in docs:
        for r in d["results"]:
            recs[r["name"]] = r
    order = {n: i for i, n in enumerate(all_variants())}
    results = sorted(recs.values(), key=lambda r: (r["ratio"] or 0, order.get(r["name"], 99)))
    for r in results:
        r["run"] = next(i for i, d in enumerate(docs) if any(x["name"] == r["name"] for x in d["results"]))
    comps = comparisons({r["name"]: r for r in results}, base["data"]["test_images"])
    for c in comps:
        c["seeds"] = str(base["config"]["seed"])
        c["verdict"] = ("within noise (not rerun)" if abs(c["diff"]) < c["two_se"]
                        else f"{'A' if c['diff'] > 0 else 'B'} better")
    pareto = prefix.parent / f"{prefix.name}_pareto.png"
    total = base["total_epochs"]
    pareto_plot(results, pareto, f"MobileNet V1 / Fashion-MNIST ({base['mode']}): top-1 vs MACs, {total:g} epochs "
                                 "per method")
    not_run = [n for n in docs[-1].get("not_run_deadline", []) if n not in recs]
    doc = {**base, "created": C.now(), "command": " ; ".join(d["command"] for d in docs), "results": results,
           "variants": [r["name"] for r in results], "comparisons": comps, "not_run_deadline": not_run,
           "pareto_plot": os.path.relpath(pareto, prefix.parent), "notes": NOTES,
           "merged_from": [{"command": d["command"], "created": d["created"], "environment": d["environment"],
                            "seconds_total": d.get("seconds_total")} for d in docs],
           "seconds_total": sum(d.get("seconds_total") or 0 for d in docs)}
    doc["notes"] = NOTES + [f"Merged from {len(docs)} runs on the same machine and settings (time-boxed GPU lease; "
                            "the second reused the first's cached dense start point): "
                            + "; ".join(f"run {i}: `{d['command']}`" for i, d in enumerate(docs)) + "."]
    j, m = C.write_results(prefix, doc, markdown(doc))
    C.log(f"merged {len(results)} results into {j}, {m}, {pareto}")
    return 0


def pareto_plot(recs: list[dict], path: Path, title: str) -> None:
    from prunekit.report.plots import _plt, _save

    plt = _plt()
    colors = {"dense": "#222222", "prunekit gradual": "#2b7bba", "prunekit one-shot": "#7fb8e0",
              "Torch-Pruning": "#1b9e77", "torch.nn.utils.prune (masks)": "#d62728", "width multiplier, scratch": "#d95f02"}
    markers = {"dense": "D", "prunekit gradual": "o", "prunekit one-shot": "o", "Torch-Pruning": "^",
               "torch.nn.utils.prune (masks)": "x", "width multiplier, scratch": "s"}
    fig, ax = plt.subplots(figsize=(8, 5))
    for fam in colors:
        pts = [r for r in recs if r["family"] == fam]
        if pts:
            ax.scatter([r["macs"] / 1e6 for r in pts], [r["top1"] for r in pts], c=colors[fam], marker=markers[fam],
                       s=45, label=fam, zorder=3)
    for i, r in enumerate(sorted(recs, key=lambda r: (r["macs"], r["top1"]))):  # stagger labels of close points
        ax.annotate(r["name"].replace("-mag", "").replace("torch-ln-structured", "ln_struct"),
                    (r["macs"] / 1e6, r["top1"]), fontsize=6, xytext=(4, 2 - 7 * (i % 3)), textcoords="offset points")
    front, best = [], -1.0
    for r in sorted(recs, key=lambda r: (r["macs"], -r["top1"])):
        if r["top1"] > best:
            front.append(r)
            best = r["top1"]
    ax.step([r["macs"] / 1e6 for r in front], [r["top1"] for r in front], where="post", color="#888888", lw=1,
            ls="--", label="Pareto front", zorder=2)
    ax.set_xscale("log")
    ax.set_xlabel("MACs per image (M, conv + linear, log scale)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, frameon=False, loc="lower right")
    fig.tight_layout()
    _save(fig, path)


def kb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1024:.0f} KB"


def markdown(doc: dict) -> str:
    cfg, env = doc["config"], doc["environment"]
    cpu = f"CPU ({env['cpu']}, {env['available_cores']} cores, {env['torch_threads']} torch threads)"
    dev = f"{env['gpu']} for training; {cpu} for export, int8 and latency" if env.get("gpu") else cpu
    n = doc["data"]["test_images"]
    lines = [f"# Peers: prunekit vs Torch-Pruning vs torch.nn.utils.prune vs width multipliers ({doc['mode']})", "",
             f"{doc['created']}. Command: `{doc['command']}`", "",
             f"Data: Fashion-MNIST, {doc['data']['train_images']:,} training images"
             f"{' (class-balanced subset)' if doc['data']['train_subset'] else ''}, {n:,} test images. "
             f"MobileNet V1 width {cfg['width']}; every method gets {doc['total_epochs']:g} epochs in all "
             f"(pruning methods: {cfg['dense_epochs']:g} dense + {cfg['prune_epochs']:g} prune + "
             f"{cfg['finetune_epochs']:g} fine-tune; one-shot methods fine-tune for the last "
             f"{cfg['prune_epochs'] + cfg['finetune_epochs']:g}). SGD Nesterov, cosine, label smoothing 0.1, batch "
             f"{cfg['batch_size']}, LR {cfg['lr']} (dense, width baselines; 1 warm-up epoch) / {cfg['stage_lr']} "
             f"(prune, fine-tune). Seed {cfg['seed']}. Torch-Pruning {env.get('torch_pruning', '?')}, iterative "
             f"K={cfg['tp_steps']}.", "",
             f"Device: {dev}; torch {env['torch']}, onnxruntime {env['onnxruntime']}. Latency: batch 1, p50, "
             f"{doc['latency_threads']} thread(s), up to {cfg['latency_repeats']} runs / {cfg['latency_seconds']:g} s "
             f"each. Load average at start {env['load_start']}, during the run {doc['load']}, at end "
             f"{doc['load_end']} -- the machine is shared, so wall times and latencies are depressed and noisy.", "",
             "| variant | family | top-1 | top-5 | int8 top-1 | params | MACs | ONNX fp32 | ONNX int8 | eager ms | "
             "ORT fp32 ms | ORT int8 ms | train wall |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in doc["results"]:
        top1 = f"{r['top1']:.2f}%"
        if r.get("reseed"):
            top1 += f" / {r['reseed']['top1']:.2f}% (s{r['reseed']['seed']})"
        wall = f"{r['wall_s']:.0f} s" + (f" (+{r['dense_start']['wall_s']:.0f} dense)" if r.get("dense_start", {}).get(
            "wall_s") else "")
        extra = ""
        if r.get("masks"):
            extra = f" ({r['nonzero_params']:,} non-zero)"
        lines.append(f"| {r['name']} | {r['family']} | {top1} | {r['top5']:.2f}% | {r['int8_top1']:.2f}% | "
                     f"{r['params']:,}{extra} | {C.fmt_m(r['macs'])} | {kb(r['onnx_fp32_bytes'])} | "
                     f"{kb(r['onnx_int8_bytes'])} | {r['pytorch_fp32_p50_ms']:.2f} | {r['ort_fp32_p50_ms']:.2f} | "
                     f"{r['ort_int8_p50_ms']:.2f} | {wall} |")
    lines += ["", f"One standard error of a top-1 near 90% on {n:,} test images: {C.binomial_se(90, n):.2f} pt; a "
              "difference below 2 SE of the difference is called noise below.", "",
              f"![top-1 vs MACs]({doc['pareto_plot']})", "", "## Key comparisons", "",
              "| A | B | top-1 A | top-1 B | A - B | 2 SE | seeds | verdict |", "|---|---|---:|---:|---:|---:|---|---|"]
    for c in doc["comparisons"]:
        lines.append(f"| {c['a']} | {c['b']} | {c['top1_a']:.2f}% | {c['top1_b']:.2f}% | {c['diff']:+.2f} | "
                     f"{c['two_se']:.2f} | {c['seeds']} | {c['verdict']} |")
    ln = [r for r in doc["results"] if r.get("masks")]
    if ln:
        lines += ["", "## torch.nn.utils.prune.ln_structured: masks are not a speed-up", ""]
        dense = next((r for r in doc["results"] if r["name"] == "dense"), None)
        for r in ln:
            m = r["masks"]
            lines.append(f"* `{r['name']}`: {m['zeroed_filters']} of {m['filters']} pointwise filters zeroed, but the "
                         f"model keeps all {r['params']:,} parameters and {C.fmt_m(r['macs'])} MACs; ONNX "
                         f"{kb(r['onnx_fp32_bytes'])} fp32 / {kb(r['onnx_int8_bytes'])} int8. Batch-1 latency with "
                         f"the masks: PyTorch eager {r['pytorch_fp32_p50_ms']:.2f} ms (masks baked in: "
                         f"{r['pytorch_fp32_p50_ms_masks_removed']:.2f} ms), ORT fp32 {r['ort_fp32_p50_ms']:.2f} ms"
                         + (f" -- dense: eager {dense['pytorch_fp32_p50_ms']:.2f} ms, ORT fp32 "
                            f"{dense['ort_fp32_p50_ms']:.2f} ms, {kb(dense['onnx_fp32_bytes'])}" if dense else "")
                         + f". The masked channels are not even dead: their BN bias (mean |beta| "
                         f"{m['mean_abs_bn_bias_of_masked_channels']:.3f}) still feeds the next layer, so they cannot "
                         "be removed without changing the function.")
    notes = list(doc["notes"])
    if doc.get("overrides"):
        notes.insert(0, f"Settings changed from {doc['mode']} mode's defaults: "
                     + ", ".join(f"{k}={v}" for k, v in doc["overrides"].items()) + ".")
    if doc.get("not_run_deadline"):
        notes.insert(0, f"Not run (the --deadline passed first): {', '.join(doc['not_run_deadline'])}.")
    lines += ["", "## Notes", ""] + [f"* {x}" for x in notes] + [""]
    if doc["mode"] == "quick":
        lines += [f"*Quick mode (CPU): {doc['quick_note']}*", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CPU settings (see the module docstring)")
    ap.add_argument("--data-dir", help="Fashion-MNIST IDX directory (default: $PRUNEKIT_DATA / system / shared)")
    ap.add_argument("--variants", help="regex selecting variants (default: all in full mode, QUICK_VARIANTS in quick)")
    ap.add_argument("--list", action="store_true", help="list the variants and exit")
    ap.add_argument("--dense", help="dense start-point model directory (must match width/data/epochs)")
    ap.add_argument("--width", type=float)
    ap.add_argument("--train-subset", type=int)
    ap.add_argument("--test-subset", type=int, default=0, help="test images (smoke tests only; 0: all 10k)")
    ap.add_argument("--dense-epochs", type=float)
    ap.add_argument("--prune-epochs", type=float)
    ap.add_argument("--finetune-epochs", type=float)
    ap.add_argument("--reseed", type=int, help="max close pairs rerun with seed+1 (quick 1, full 6; 0: none)")
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--lr", type=float, help="LR of dense and width baselines (full 0.1, quick 0.05)")
    ap.add_argument("--stage-lr", type=float, help="LR of prune / fine-tune stages (full 0.05, quick 0.025)")
    ap.add_argument("--tp-steps", type=int, help="Torch-Pruning iterative steps (full 5, quick 4)")
    ap.add_argument("--exporter", choices=["auto", "dynamo", "legacy"], help="ONNX exporter (full auto, quick legacy)")
    ap.add_argument("--latency-seconds", type=float, help="max seconds per latency measurement (full 10, quick 4)")
    ap.add_argument("--only", help="comma-separated exact variant names, run in this order (overrides --variants)")
    ap.add_argument("--deadline", type=float, help="seconds: start no new variant (nor second seed) after this; "
                    "the report covers what finished (time-boxed runs, e.g. a lent GPU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--retrain", action="store_true", help="do not reuse a cached dense start point")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, help="torch and ORT threads (default: torch's choice)")
    ap.add_argument("--out", help="output prefix (default benchmarks/results/peers[_quick])")
    ap.add_argument("--render-only", metavar="JSON", help="rewrite PREFIX.md (and notes) from an existing result JSON")
    ap.add_argument("--merge", nargs="+", metavar="JSON", help="combine result JSONs of time-boxed runs with the same "
                    "settings into one report at --out (comparisons recomputed, no reseed)")
    args = ap.parse_args(argv)
    if args.merge:
        if not args.out:
            ap.error("--merge needs --out PREFIX")
        return merge(args.merge, Path(args.out))
    if args.render_only:
        import json

        doc = json.loads(Path(args.render_only).read_text())
        doc["notes"] = NOTES + [n for n in doc.get("notes", []) if n.startswith("Merged from")]
        j, m = C.write_results(Path(args.render_only).with_suffix(""), doc, markdown(doc))
        C.log(f"re-rendered {j}, {m}")
        return 0
    mode = "quick" if args.quick else "full"
    names = all_variants()
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in all_variants()]
        if unknown:
            ap.error(f"unknown variant(s) {', '.join(unknown)}; see --list")
    elif args.variants:
        names = [n for n in names if re.search(args.variants, n)]
    elif args.quick:
        names = [n for n in names if n in QUICK_VARIANTS]
    if args.list:
        print("\n".join(names))
        return 0

    from prunekit.train import DistContext, pick_device

    cfg = dict(MODES[mode])
    for k in ("width", "train_subset", "dense_epochs", "prune_epochs", "finetune_epochs", "reseed", "batch_size",
              "lr", "stage_lr", "tp_steps", "exporter", "latency_seconds"):
        if getattr(args, k) is not None:
            cfg[k] = getattr(args, k)
    cfg.update(seed=args.seed, dense_dir=args.dense, retrain=args.retrain)
    threads = C.setup_threads(args.threads)
    device = pick_device(args.device)
    env = C.environment(device)
    suffix = "_quick" if args.quick else ""
    prefix = Path(args.out) if args.out else C.RESULTS / f"peers{suffix}"
    work = C.WORK / f"peers{suffix}"
    onnx_dir = work / "onnx"
    onnx_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    data = C.load_fmnist(args.data_dir, cfg["train_subset"], args.test_subset)
    C.log(f"{len(names)} variants; data {len(data.train):,} train / {len(data.test):,} test; device {device}, "
          f"{threads} threads; load {C.loadavg()}")
    runner = Runner(cfg, data, device, work, DistContext(device=device))
    recs: dict[str, dict] = {}
    from prunekit.io import write_json

    with C.LoadSampler(every=60) as ls:
        skipped: list[str] = []
        for i, name in enumerate(names):
            if args.deadline and time.perf_counter() - t_start > args.deadline:
                skipped = names[i:]
                C.log(f"deadline ({args.deadline:.0f} s) passed: not running {', '.join(skipped)}")
                break
            C.log(f"({i + 1}/{len(names)}) {name}")
            model, rec = runner.run(name, cfg["seed"])
            rec.update(deploy_metrics(model, name, data, cfg, onnx_dir, threads))
            recs[name] = rec
            C.log(f"{name}: top-1 {rec['top1']:.2f}%  int8 {rec['int8_top1']:.2f}%  params {rec['params']:,}  "
                  f"MACs {rec['macs']:,}  ORT int8 {rec['ort_int8_p50_ms']:.2f} ms  ({rec['wall_s']:.0f} s)")
            write_json(work / "partial.json", {"command": C.command_line(), "config": cfg, "results": list(recs.values())})

        # second seed for the closest key pairs within noise
        n_test = len(data.test)
        comps = comparisons(recs, n_test)
        close = sorted([c for c in comps if abs(c["diff"]) < c["two_se"]], key=lambda c: abs(c["diff"]))
        rerun: list[str] = []
        past = bool(args.deadline and time.perf_counter() - t_start > args.deadline)
        for c in ([] if past else close[: cfg["reseed"]]):
            rerun += [x for x in (c["a"], c["b"]) if x not in rerun]
        for name in rerun:
            C.log(f"second seed ({cfg['seed'] + 1}) for {name}")
            _, r2 = runner.run(name, cfg["seed"] + 1)
            recs[name]["reseed"] = {k: r2[k] for k in ("seed", "top1", "top5", "wall_s")}
        for c in comps:
            a, b = recs[c["a"]], recs[c["b"]]
            if "reseed" in a and "reseed" in b:
                da, db = (a["top1"] + a["reseed"]["top1"]) / 2, (b["top1"] + b["reseed"]["top1"]) / 2
                d2 = a["reseed"]["top1"] - b["reseed"]["top1"]
                c.update(seeds=f"{cfg['seed']},{cfg['seed'] + 1}", mean_diff=da - db, diff_seed2=d2)
                same_sign = np.sign(c["diff"]) == np.sign(d2)
                c["verdict"] = (f"mean {da - db:+.2f} pt over 2 seeds; " +
                                ("consistent sign, " if same_sign else "sign flips between seeds: ") +
                                ("within noise" if (abs(da - db) < c["two_se"] or not same_sign) else
                                 f"{'A' if da > db else 'B'} better"))
            else:
                c["seeds"] = str(cfg["seed"])
                c["verdict"] = ("within noise (not rerun)" if abs(c["diff"]) < c["two_se"]
                                else f"{'A' if c['diff'] > 0 else 'B'} better")
    results = list(recs.values())
    pareto = prefix.parent / f"{prefix.name}_pareto.png"
    pareto_plot(results, pareto, f"MobileNet V1 / Fashion-MNIST ({mode}): top-1 vs MACs, {runner.total_epochs:g} "
                                 "epochs per method")
    doc = {"benchmark": "peers", "issue": 9, "created": C.now(), "mode": mode, "command": C.command_line(),
           "config": cfg, "variants": [n for n in names if n in recs], "not_run_deadline": skipped,
           "overrides": {k: cfg[k] for k in MODES[mode] if cfg[k] != MODES[mode][k]}, "total_epochs": runner.total_epochs,
           "data": {"source": data.source, **data.notes}, "environment": env, "latency_threads": threads,
           "load": ls.summary(), "load_end": C.loadavg(), "results": results, "comparisons": comps,
           "pareto_plot": os.path.relpath(pareto, prefix.parent), "notes": NOTES,
           "seconds_total": time.perf_counter() - t_start}
    if mode == "quick":
        cut = [n for n in all_variants() if n not in names]
        doc["quick_note"] = (f"width {cfg['width']} (not 1.0); {len(data.train):,} training images (not 60k); "
                             f"{cfg['dense_epochs']:g}+{cfg['prune_epochs']:g}+{cfg['finetune_epochs']:g} epochs (not "
                             "30+5+10); batch 128 / LR 0.05 and 0.025 (not 256 / 0.1 and 0.05); legacy ONNX exporter; second seed for "
                             f"the closest pair only; variants cut: {', '.join(cut) if cut else 'none'}")
    j, m = C.write_results(prefix, doc, markdown(doc))
    C.log(f"wrote {j}, {m}, {pareto} ({doc['seconds_total']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
